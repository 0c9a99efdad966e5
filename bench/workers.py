"""Run one measurement in a fresh Python process and read back its ``RESULT {json}`` line.

A fresh process per measurement keeps allocator state, peak-memory counters and compiled
kernels of one configuration from leaking into the next.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "RESULT "


def report(result: dict) -> None:
    """Print a worker's result where :func:`run_worker` finds it."""
    print(PREFIX + json.dumps(result), flush=True)


QSWEEP_FOLDERS = ("trainers", "evaluation", "orchestrator", "configs", "sweeps")


def import_root(project: Path) -> Path:
    """The sys.path entry that imports qsweep from a checkout without installing it.

    A checkout whose folders install under the ``qsweep`` namespace (``pyproject.toml`` maps
    ``trainers/`` to ``qsweep.trainers``) is imported through a view of links,
    ``<project>/.qsweep-view/qsweep/<folder>`` -> ``<project>/<folder>``, laid out as the wheel
    installs it; an older checkout (top-level packages) from its root.
    """
    if '"qsweep.trainers"' not in (project / "pyproject.toml").read_text():
        return project
    view = project / ".qsweep-view" / "qsweep"
    view.mkdir(parents=True, exist_ok=True)
    for folder in QSWEEP_FOLDERS:
        link = view / folder
        if not link.is_symlink():
            link.symlink_to(project.resolve() / folder)
    return view.parent


def run_worker(arguments: list[str]) -> dict:
    """Run ``python <arguments>`` from the project root; its result, or ``{"error": ...}``."""
    paths = [os.environ.get("PYTHONPATH"), str(import_root(ROOT))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], capture_output=True, text=True, cwd=ROOT,
                          env=env, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith(PREFIX)), None)
    result: dict = {"wall_s": round(time.perf_counter() - started, 1)}
    if line is None:
        result["error"] = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(done.stderr[-3000:], file=sys.stderr)
    else:
        result.update(json.loads(line[len(PREFIX):]))
    return result


def environment() -> dict:
    """Versions of the libraries a measurement depends on, and the GPU."""
    import importlib.metadata

    import torch

    info = {"torch": torch.__version__}
    for package in ("transformers", "bitsandbytes", "peft", "lm_eval"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
