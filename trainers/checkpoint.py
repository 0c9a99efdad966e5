"""Resumable checkpoints: adapter, optimizer, schedule, RNG states, step and data position.

Layout of ``<workdir>/checkpoints/step-000250/``::

    adapter_model.safetensors, adapter_config.json   (peft, loadable on its own)
    optimizer.pt, scheduler.pt, rng.pt               (tensors; loaded with weights_only=True)
    trainer_state.json                               (step, data position, Python/NumPy RNG)

The checkpoint of the last step holds no ``optimizer.pt`` or ``scheduler.pt``: nothing is left
to train (a run with more steps is another config, refused on resume), and the optimizer's
state is the largest part of a checkpoint (two float32 moments per adapter weight: 1.3 GB for
an 8B model with LoRA r=64 on every linear layer).

A checkpoint is written to a temporary directory and renamed into place, so a process killed
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.json"
_PREFIX = "step-"


@dataclass(frozen=True)
class TrainerState:
    step: int
    """Optimizer steps completed."""
    position: int
    """Micro-batches consumed (see ``qsweep.trainers.examples.BatchOrder``)."""
    last_loss: float | None
    config_hash: str
    config: dict[str, Any]
    """The identity settings of the run that wrote it (to explain a mismatch)."""
    micro_batch_size: int | None = None
    """The micro-batch it trained with (a resumed ``micro_batch_size: auto`` run keeps it)."""


def checkpoint_root(workdir: Path) -> Path:
    return Path(workdir) / "checkpoints"


def latest_checkpoint(workdir: Path) -> Path | None:
    """The newest complete checkpoint under ``workdir``, or None."""
    root = checkpoint_root(workdir)
    if not root.is_dir():
        return None
    complete = [p for p in root.glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file()
                and p.name[len(_PREFIX):].isdigit()]
    return max(complete, key=lambda p: int(p.name[len(_PREFIX):]), default=None)


def save_checkpoint(workdir: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: TrainerState, keep: int, *, final: bool = False) -> Path:
    """Write a checkpoint for ``state.step`` and keep only the newest ``keep``; a ``final`` one
    (the last step) without the optimizer and schedule."""
    root = checkpoint_root(workdir)
    target = root / f"{_PREFIX}{state.step:06d}"
    partial = root / f".{target.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    model.save_pretrained(partial, safe_serialization=True)
    if not final:
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, partial / "rng.pt")
    numpy_state = np.random.get_state()
    payload = {
        **asdict(state),
        "python_rng": _jsonable(random.getstate()),
        "numpy_rng": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }
    (partial / STATE_FILE).write_text(json.dumps(payload, indent=1))
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    _prune(root, keep)
    return target


def load_checkpoint(path: Path, model: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, device: torch.device) -> TrainerState:
    """Restore ``model``'s adapter, the optimizer, schedule and RNGs; return the state (a final
    checkpoint has no optimizer or schedule to restore: its run has no step left)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = load_file(str(path / "adapter_model.safetensors"), device=str(device))
    result = set_peft_model_state_dict(model, adapter)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"checkpoint {path} has adapter weights this model lacks: "
                         f"{result.unexpected_keys[:3]}")
    if (path / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device,
                                             weights_only=True))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    payload = json.loads((path / STATE_FILE).read_text())
    random.setstate(_tupled(payload.pop("python_rng")))
    kind, keys, *rest = payload.pop("numpy_rng")
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return TrainerState(**payload)


def read_state(path: Path) -> TrainerState:
    """The trainer state of checkpoint ``path`` without loading anything else."""
    payload = json.loads((path / STATE_FILE).read_text())
    payload.pop("python_rng")
    payload.pop("numpy_rng")
    return TrainerState(**payload)


def discard_other_configs(workdir: Path, config_hash: str) -> int:
    """Remove the checkpoints of ``workdir`` written by another configuration (an out-of-memory
    retry's larger micro-batch); the number removed."""
    root = checkpoint_root(workdir)
    removed = 0
    for path in sorted(root.glob(f"{_PREFIX}*")) if root.is_dir() else []:
        try:
            same = read_state(path).config_hash == config_hash
        except (OSError, ValueError, KeyError, TypeError):
            same = False  # unreadable: it could not be resumed from either
        if not same:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _prune(root: Path, keep: int) -> None:
    steps = sorted((p for p in root.glob(f"{_PREFIX}*") if p.name[len(_PREFIX):].isdigit()),
                   key=lambda p: int(p.name[len(_PREFIX):]))
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple) else value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value
