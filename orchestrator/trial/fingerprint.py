"""The environment a trial ran in, recorded with its results so that they can be reproduced."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("qsweep", "torch", "transformers", "bitsandbytes", "peft", "accelerate", "datasets",
            "lm_eval", "mlflow", "optuna", "ray")
SOURCE_DIR = Path(__file__).resolve().parents[2]
"""The checkout qsweep runs from, for its git commit (none where qsweep was installed from a wheel)."""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(SOURCE_DIR), *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def environment_fingerprint(data_sha256: str | None = None) -> dict[str, Any]:
    """Python, package, CUDA, driver and GPU versions, the project commit and the data hash."""
    import torch

    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "cuda_available": cuda,
        "driver": _driver() if cuda else None,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "project_commit": commit,
        "project_dirty": bool(dirty) if commit else None,
        "data_sha256": data_sha256,
    }
