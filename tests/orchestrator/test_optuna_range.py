"""The supported Optuna range (``optuna`` in pyproject.toml) is tested at both ends: the whole
suite runs the version that installs (the newest), and this module runs the Optuna adapter's
tests and the driver's against the range's lower bound, installed into a folder of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def optuna_requirement() -> Requirement:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(req for req in map(Requirement, dependencies) if req.name == "optuna")


def test_the_range_is_bounded_on_both_sides() -> None:
    operators = {spec.operator for spec in optuna_requirement().specifier}
    assert ">=" in operators and "<" in operators


def test_the_adapter_and_the_driver_work_with_the_oldest_supported_optuna(tmp_path: Path) -> None:
    oldest = next(spec.version for spec in optuna_requirement().specifier if spec.operator == ">=")
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                           str(target), f"optuna=={oldest}"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    paths = [str(target), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    version = subprocess.run([sys.executable, "-c", "import optuna; print(optuna.__version__)"],
                             capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert version.split(".")[:2] == oldest.split(".")[:2]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/orchestrator/test_search.py", "tests/orchestrator/test_driver.py"],
                           capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert tests.returncode == 0, tests.stdout[-4000:]
    assert " passed" in tests.stdout.splitlines()[-1] and "failed" not in tests.stdout.splitlines()[-1]
