"""Trials that share one GPU take turns computing on it; the one waiting loads its model ahead.

With ``resources.overlap`` a sweep places two trials on each GPU. Two file locks per GPU of
the node (in the temp directory, named after ``CUDA_VISIBLE_DEVICES``) order them:

* the **turn**, held by the trial that computes: from its first evaluation (or from loading its
  weights, when it could not load them ahead) to the end of its final evaluation. One trial
  trains or evaluates at a time.
* the **allocation** lock, held by whoever may claim GPU memory at will: the turn's holder
  while it loads, evaluates (an evaluation's batches fill the memory that is free,
  ``qsweep.evaluation.batching``) and runs its first training step; the waiting trial while it
  loads ahead.

After its first training step the holder's memory is steady. It gives what its allocator
keeps cached but unused (an evaluation's batches) back to the device, writes how much more it may
still claim (its training peak estimated by ``qsweep.trainers.cost_model`` less what it has
reserved; what it has reserved again when the estimate is unknown) into a note beside the
locks, and gives the allocation lock up. The waiting trial then loads its model if the GPU's
free memory holds it, that growth and a margin (``resources.load_ahead``), and waits for the
turn with its weights in place: the hand-over between two trials costs the release of the
first one's memory, not the loading of the second's. Without room it loads once it has the
turn. The holder takes the allocation lock back for every evaluation (waiting, at most, for a
load in progress to finish).

The OS releases the locks of a process that dies; a note left behind names its process and is
ignored once that process is gone. Nobody waits for the turn while holding the allocation lock,
so the two locks cannot deadlock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from qsweep.trainers.cost_model import GIB, shape_of, training_cost

log = logging.getLogger("qsweep")

POLL_S = 0.25
"""Seconds between looks at the holder's note while it has not trained a step yet."""
MARGIN_SHARE = 0.05
"""Share of the GPU's memory (at least 1 GiB) left free after loading ahead."""

MemoryReading = Callable[[], float]


@dataclass(frozen=True)
class MemoryNeeds:
    """What a trial claims on its GPU, estimated before it loads (``qsweep.trainers.cost_model``)."""

    resident_bytes: float
    """Its model once loaded: quantized weights, adapters and their optimizer state, 1 GiB of
    CUDA context and workspace."""
    peak_bytes: float
    """Its training peak (sequences counted at their full length: an upper bound)."""


def memory_needs(cfg: Any, source: str) -> MemoryNeeds | None:
    """The memory a trial's model needs, or None when its shape is unknown (a hub id that is
    not in ``qsweep.trainers.cost_model.KNOWN_SHAPES`` and not a local directory)."""
    shape = shape_of(cfg.model.name) or shape_of(source)
    if shape is None:
        return None
    cost = training_cost(cfg, shape)
    return MemoryNeeds(cost.weight_bytes + cost.adapter_state_bytes + GIB, cost.peak_bytes)


class GpuTurns:
    """One trial's side of the turns on its GPU (see the module docstring).

    Use as a context manager around everything the trial does with the GPU: leaving it gives
    the turn, the allocation lock and the note back.

    Args:
        name: the GPU's name on this node (its ``CUDA_VISIBLE_DEVICES``).
        directory: where the locks live (the temp directory: one per node).
        load_ahead: load while the other trial trains, when memory allows.
        free_bytes, total_bytes, reserved_bytes: the GPU's free and total memory and what this
            process has reserved (CUDA's, by default; injectable for tests on a CPU).
        release_cached: gives this process's cached but unused GPU memory back to the device
            (``torch.cuda.empty_cache``), so that an evaluation's batches do not stay reserved.
    """

    def __init__(self, name: str, directory: Path | None = None, *, load_ahead: bool = True,
                 free_bytes: MemoryReading | None = None, total_bytes: MemoryReading | None = None,
                 reserved_bytes: MemoryReading | None = None,
                 release_cached: Callable[[], None] | None = None, poll_s: float = POLL_S):
        safe = "".join(c if c.isalnum() else "-" for c in name)
        stem = Path(directory or tempfile.gettempdir()) / f"qsweep-gpu-{safe}"
        self.turn = FileLock(f"{stem}.lock", thread_local=False)
        self.allocation = FileLock(f"{stem}.alloc.lock", thread_local=False)
        self.note = Path(f"{stem}.json")
        self.load_ahead = load_ahead
        self.free_bytes = free_bytes or _cuda_free
        self.total_bytes = total_bytes or _cuda_total
        self.reserved_bytes = reserved_bytes or _cuda_reserved
        self.release_cached = release_cached or _cuda_release_cached
        self.poll_s = poll_s
        self.needs: MemoryNeeds | None = None
        self.has_turn = False
        self.allocates = False
        self.loaded_ahead = False
        """The model was loaded before this trial had the turn."""
        self.trains = False
        """The holder is past its first training step (the allocation lock given up)."""

    @classmethod
    def for_visible_gpu(cls, load_ahead: bool = True) -> GpuTurns | None:
        """The turns of the GPU this process was given (None without ``CUDA_VISIBLE_DEVICES``)."""
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        return cls(visible, load_ahead=load_ahead) if visible else None

    def __enter__(self) -> GpuTurns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def wait_to_load(self, needs: MemoryNeeds | None) -> None:
        """Return once this trial may load its model: with the turn, or ahead of it while the
        holder trains with room beside it (:attr:`loaded_ahead`)."""
        self.needs = needs
        while True:
            self._take_allocation()
            if self._try_turn():
                return
            fits = self._fits_beside_holder()
            if fits:
                self.loaded_ahead = True
                return
            self._give_allocation_up()
            if fits is False:
                self._wait_for_turn()
                return
            time.sleep(self.poll_s)

    def take_turn(self) -> None:
        """After loading ahead: wait for the turn (the allocation lock given up meanwhile)."""
        if self.has_turn:
            return
        self._give_allocation_up()
        self._wait_for_turn()

    def training(self) -> None:
        """The holder's first training step is done: publish its growth, let the other load."""
        if not self.has_turn or self.trains:
            return
        self.trains = True
        self._publish()

    @contextlib.contextmanager
    def allocating(self) -> Iterator[None]:
        """The holder claims memory at will inside (an evaluation); training resumes after."""
        if not self.has_turn or self.allocates:
            yield
            return
        self._take_allocation()
        try:
            yield
        finally:
            self._publish()

    def release(self) -> None:
        """Give everything back (the model's memory should be released before)."""
        if self.has_turn:
            self.note.unlink(missing_ok=True)
        self._give_allocation_up()
        if self.has_turn:
            self.turn.release()
            self.has_turn = False
        self.trains = False

    def _fits_beside_holder(self) -> bool | None:
        """Whether this model fits beside the training holder; None: the holder has not trained
        a step yet (ask again)."""
        if not self.load_ahead or self.needs is None:
            return False
        growth = self._holder_growth()
        if growth is None:
            return None
        total = self.total_bytes()
        free = self.free_bytes()
        room = free - growth - max(GIB, MARGIN_SHARE * total)
        fits = room >= self.needs.resident_bytes
        log.info("%s the model ahead of the GPU's turn: %.1f GiB free, the trial training on it may "
                 "claim %.1f GiB more, this model needs %.1f GiB", "loading" if fits else "not loading",
                 free / GIB, growth / GIB, self.needs.resident_bytes / GIB)
        return fits

    def _holder_growth(self) -> float | None:
        try:
            note = json.loads(self.note.read_text())
            pid, growth = int(note["pid"]), float(note["growth_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return growth if _alive(pid) else None

    def _publish(self) -> None:
        """Write this holder's growth and give the allocation lock up."""
        self.release_cached()
        reserved = self.reserved_bytes()
        growth = max(self.needs.peak_bytes - reserved, 0.0) if self.needs else reserved
        temporary = self.note.with_suffix(".tmp")
        temporary.write_text(json.dumps({"pid": os.getpid(), "growth_bytes": growth}))
        temporary.replace(self.note)
        self._give_allocation_up()

    def _try_turn(self) -> bool:
        try:
            self.turn.acquire(timeout=0)
        except Timeout:
            return False
        self._got_turn()
        return True

    def _wait_for_turn(self) -> None:
        """Block until the turn is free; then take the allocation lock too."""
        self.turn.acquire()
        self._take_allocation()
        self._got_turn()

    def _got_turn(self) -> None:
        self.has_turn = True
        self.note.unlink(missing_ok=True)  # a note of an earlier holder

    def _take_allocation(self) -> None:
        if not self.allocates:
            self.allocation.acquire()
            self.allocates = True

    def _give_allocation_up(self) -> None:
        if self.allocates:
            self.allocation.release()
            self.allocates = False


class NoTurns:
    """A GPU (or CPU) that the trial has to itself: every step is free."""

    loaded_ahead = False

    def __enter__(self) -> NoTurns:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def wait_to_load(self, needs: MemoryNeeds | None) -> None:
        return None

    def take_turn(self) -> None:
        return None

    def training(self) -> None:
        return None

    @contextlib.contextmanager
    def allocating(self) -> Iterator[None]:
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cuda_free() -> float:
    import torch

    return float(torch.cuda.mem_get_info()[0])


def _cuda_total() -> float:
    import torch

    return float(torch.cuda.mem_get_info()[1])


def _cuda_release_cached() -> None:
    import torch

    torch.cuda.empty_cache()


def _cuda_reserved() -> float:
    import torch

    return float(torch.cuda.memory_reserved())
