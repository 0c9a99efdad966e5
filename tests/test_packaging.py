"""What ``pip install .`` puts into site-packages: one ``qsweep`` namespace that runs outside the
checkout, with its presets, sweep specs and lm-eval task files as package data."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FOLDERS = ("trainers", "evaluation", "orchestrator", "configs", "sweeps")


def test_every_package_folder_is_installed_under_qsweep() -> None:
    folders = {"qsweep." + ".".join(init.parent.relative_to(ROOT).parts)
               for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == folders
    assert setuptools["package-dir"] == {f"qsweep.{folder}": folder for folder in FOLDERS}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
                           str(ROOT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = out.glob("qsweep-*.whl")
    return found


def test_the_wheel_holds_one_namespace_and_its_data(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"qsweep", wheel.name.split("-py")[0] + ".dist-info"}
    for data in ("qsweep/sweeps/demo.yaml", "qsweep/configs/trial/smollm2-offline.yaml",
                 "qsweep/evaluation/tasks/mmlu_offline/_default_template_yaml",
                 "qsweep/evaluation/tasks/mmlu_offline/offline.py",
                 "qsweep/evaluation/tasks/perplexity_offline/perplexity_offline.yaml"):
        assert data in names


def test_the_installed_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path, tiny_trial) -> None:
    """A fresh venv with the wheel (its dependencies borrowed from this environment through a
    ``.pth`` line, which runs none of this environment's own ``.pth`` hooks — not the editable
    install's finder)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                           "--quiet", str(wheel)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["COLUMNS"] = "160"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, cwd=elsewhere, env=env, check=False)

    where = run(str(python), "-c", "import qsweep.trainers, importlib.util; print(qsweep.trainers.__file__); "
                "print([name for name in ('trainers', 'orchestrator', 'evaluation', 'configs', 'sweeps') "
                "if importlib.util.find_spec(name)])")
    assert where.returncode == 0, where.stderr
    location, generic = where.stdout.splitlines()
    assert location.startswith(site) and generic == "[]"

    qsweep = str(venv / "bin" / "qsweep")
    plan = run(qsweep, "plan", "demo")
    assert plan.returncode == 0, plan.stderr
    assert "NF4+DQ" in plan.stdout and "FP4" in plan.stdout

    config = elsewhere / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_trial(train={"max_steps": 2})))
    train = run(qsweep, "train", str(config))
    assert train.returncode == 0, train.stderr[-3000:]
    assert "step 2/2 loss" in train.stdout
    (workdir,) = (elsewhere / "qsweep-runs" / "train").iterdir()
    assert (workdir / "adapter" / "adapter_model.safetensors").is_file()
