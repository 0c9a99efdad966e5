"""Resumable checkpoints: adapter, optimizer, schedule, RNG states, step and data position.

Layout of ``<workdir>/checkpoints/step-000250/``::

    adapter_model.safetensors, adapter_config.json   (peft, loadable on its own)
    optimizer.pt, scheduler.pt, rng.pt               (tensors; loaded with weights_only=True)
    trainer_state.json                               (step, data position, Python/NumPy RNG)
    manifest.json                                    (each file's size and SHA-256)

The checkpoint of the last step holds no ``optimizer.pt`` or ``scheduler.pt``: nothing is left
to train (a run with more steps is another config, refused on resume), and the optimizer's
state is the largest part of a checkpoint (two float32 moments per adapter weight: 1.3 GB for
an 8B model with LoRA r=64 on every linear layer).

A checkpoint is written to a temporary directory and renamed into place, so a process killed
mid-save leaves the previous checkpoint as the latest. One damaged later (a truncated or
altered file: a full disk, a bad copy) is found when it is read — its files against the
manifest, then every file read in full before anything is restored — and renamed
``damaged-step-…``; the run resumes from the newest intact one, or from step 0 when none is
(:func:`newest_intact`).
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
from qsweep.trainers.hashing import sha256_file

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
_PREFIX = "step-"
DAMAGED_PREFIX = "damaged-"


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
    packed: bool | None = None
    """Whether it packed its micro-batches (a resumed ``packing: auto`` run keeps it)."""


def checkpoint_root(workdir: Path) -> Path:
    return Path(workdir) / "checkpoints"


def checkpoints(workdir: Path) -> list[Path]:
    """The complete checkpoints under ``workdir`` (those with a trainer state), newest first."""
    root = checkpoint_root(workdir)
    if not root.is_dir():
        return []
    complete = [p for p in root.glob(f"{_PREFIX}*") if (p / STATE_FILE).is_file()
                and p.name[len(_PREFIX):].isdigit()]
    return sorted(complete, key=lambda p: int(p.name[len(_PREFIX):]), reverse=True)


def latest_checkpoint(workdir: Path) -> Path | None:
    """The newest complete checkpoint under ``workdir``, or None (not checked: see
    :func:`newest_intact`)."""
    found = checkpoints(workdir)
    return found[0] if found else None


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
    manifest = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                for f in sorted(partial.iterdir()) if f.is_file()}
    (partial / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    _prune(root, keep)
    return target


class CheckpointDamaged(Exception):
    """A checkpoint whose files do not match its manifest or cannot be read."""


@dataclass
class CheckpointContents:
    """Everything a checkpoint restores, read in full (nothing restored yet)."""

    path: Path
    adapter: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    rng: dict[str, Any]
    payload: dict[str, Any]

    @property
    def state(self) -> TrainerState:
        return TrainerState(**{k: v for k, v in self.payload.items() if k not in ("python_rng", "numpy_rng")})


def verify(path: Path) -> None:
    """Check each file of checkpoint ``path`` against its manifest (size, then SHA-256); a
    checkpoint written before manifests is not checked here.

    Raises:
        CheckpointDamaged: naming the first file that differs.
    """
    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        return
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointDamaged(f"{MANIFEST_FILE} unreadable ({err})") from None
    for name, expected in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointDamaged(f"{name} is missing")
        if file.stat().st_size != expected["bytes"]:
            raise CheckpointDamaged(f"{name} has {file.stat().st_size:,} bytes, not {expected['bytes']:,}")
        if sha256_file(file) != expected["sha256"]:
            raise CheckpointDamaged(f"{name} does not match its checksum")


def read_checkpoint(path: Path, device: torch.device) -> CheckpointContents:
    """Verify checkpoint ``path`` and read all of it into memory, restoring nothing.

    Raises:
        CheckpointDamaged: a file differs from the manifest, or cannot be read or parsed.
    """
    from safetensors.torch import load_file

    verify(path)
    try:
        adapter = load_file(str(path / "adapter_model.safetensors"), device=str(device))
        optimizer = scheduler = None
        if (path / "optimizer.pt").is_file():
            optimizer = torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
            scheduler = torch.load(path / "scheduler.pt", weights_only=True)
        rng = torch.load(path / "rng.pt", weights_only=True)
        payload = json.loads((path / STATE_FILE).read_text())
    except Exception as err:  # noqa: BLE001 - any failure to read means a damaged checkpoint
        raise CheckpointDamaged(f"unreadable ({type(err).__name__}: {str(err)[:200]})") from None
    return CheckpointContents(path, adapter, optimizer, scheduler, rng, payload)


def restore(contents: CheckpointContents, model: Any, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> TrainerState:
    """Restore ``model``'s adapter, the optimizer, schedule and RNGs from what
    :func:`read_checkpoint` read; the state (a final checkpoint has no optimizer or schedule to
    restore: its run has no step left)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, contents.adapter)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"checkpoint {contents.path} has adapter weights this model lacks: "
                         f"{result.unexpected_keys[:3]}")
    if contents.optimizer is not None:
        optimizer.load_state_dict(contents.optimizer)
        scheduler.load_state_dict(contents.scheduler)
    torch.set_rng_state(contents.rng["torch"])
    if "cuda" in contents.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(contents.rng["cuda"])
    payload = dict(contents.payload)
    random.setstate(_tupled(payload.pop("python_rng")))
    kind, keys, *rest = payload.pop("numpy_rng")
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    return TrainerState(**payload)


def load_checkpoint(path: Path, model: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, device: torch.device) -> TrainerState:
    """Read and restore checkpoint ``path`` (:func:`read_checkpoint`, :func:`restore`)."""
    return restore(read_checkpoint(path, device), model, optimizer, scheduler)


def newest_intact(workdir: Path, device: torch.device) -> tuple[CheckpointContents | None, list[str]]:
    """The newest checkpoint of ``workdir`` that reads back whole, and what was wrong with the
    newer ones (``"step-000004: adapter_model.safetensors has 1,024 bytes, not 2,048"``), each
    renamed ``damaged-step-…`` so that no later resume tries it again. (None, [...]) when no
    checkpoint is intact: the run starts over from step 0."""
    damaged = []
    for path in checkpoints(workdir):
        try:
            return read_checkpoint(path, device), damaged
        except CheckpointDamaged as err:
            damaged.append(f"{path.name}: {err}")
            aside = path.with_name(DAMAGED_PREFIX + path.name)
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
    return None, damaged


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
