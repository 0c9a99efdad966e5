"""Evaluation batch sizes chosen from measured memory, once per model, at the lengths requests have.

lm-eval's ``batch_size: auto`` finds a batch size by running forward passes of up to 64
sequences at the model's advertised context (``max_position_embeddings``: 8,192 for
Llama 3, 131,072 for Llama 3.1), for every evaluation and request type: on an 8B model that
took minutes per evaluation, longer than the evaluation itself (bench/README.md). A
:class:`BatchSizer` instead measures what one more sequence costs at the length of the
longest request actually being scored — two small forward passes — and derives the batch
from the memory free at that moment. One sizer serves every evaluation of a trial
(baseline, intermediate, final): it measures again only for requests longer than any it has
measured, and an evaluation that still runs out of memory is retried with half the batch
(:meth:`BatchSizer.shrink`).

On a CPU nothing is probed: the batch is :data:`CPU_BATCH_SIZE` (lm-eval's probing there
takes minutes and can swap the machine).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

log = logging.getLogger("qsweep")

CPU_BATCH_SIZE = 4
MAX_BATCH_SIZE = 64
"""Upper bound of a chosen batch (lm-eval's default ``max_batch_size``)."""
HEADROOM = 0.85
"""Share of the free memory a chosen batch may fill: allocator fragmentation and the
bookkeeping lm-eval does around each forward pass take the rest."""

Forward = Callable[[int, int], None]
"""``forward(batch, length)``: one scoring pass of ``batch`` sequences of ``length`` tokens."""


class MemoryGauge(Protocol):
    """Accelerator memory as the sizer reads it (``CudaGauge`` in practice)."""

    def available(self) -> int:
        """Bytes a new allocation can still get (free on the device plus cached by us)."""
        ...

    def peak_during(self, run: Callable[[], None]) -> int:
        """Bytes allocated at the peak of ``run()`` beyond what was allocated before it."""
        ...


class CudaGauge:
    """Memory of one CUDA device through PyTorch's caching allocator."""

    def __init__(self, device: torch.device):
        self.device = device

    def available(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + cached)

    def peak_during(self, run: Callable[[], None]) -> int:
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        run()
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device) - before)


@dataclass
class BatchSizer:
    """Batch sizes for one model's evaluations (see the module docstring).

    Args:
        fixed: a configured batch size (``eval.batch_size``), used as is; None: choose.
        gauge: the device's memory; None (a CPU): :data:`CPU_BATCH_SIZE`, nothing probed.
        max_batch: upper bound of a chosen batch (lowered by :meth:`shrink`).
    """

    fixed: int | None = None
    gauge: MemoryGauge | None = None
    max_batch: int = MAX_BATCH_SIZE
    per_token: float = 0.0
    """Bytes one more sequence costs per token of its length (measured, then only raised)."""
    measured_length: int = 0
    """The longest length measured so far; shorter requests reuse that measurement."""
    probes: list[tuple[int, int]] = field(default_factory=list)
    """(batch, length) of every probing pass, for records and tests."""
    chosen: dict[str, int] = field(default_factory=dict)
    """The batch chosen for each kind of request (loglikelihood, rolling, generate) last time."""

    @classmethod
    def for_device(cls, batch_size: int | str, device: torch.device) -> BatchSizer:
        """The sizer for ``eval.batch_size`` (an int or ``auto``) on ``device``."""
        fixed = batch_size if isinstance(batch_size, int) else None
        gauge = CudaGauge(device) if device.type == "cuda" and fixed is None else None
        return cls(fixed=fixed, gauge=gauge)

    def choose(self, kind: str, length: int, count: int, forward: Forward) -> int:
        """The batch for ``count`` requests of at most ``length`` tokens.

        ``forward(batch, length)`` runs one scoring pass; it is called only to measure (twice
        at batch 1, once at batch 2) when ``length`` exceeds every length measured before.
        """
        if self.fixed is not None:
            batch = self.fixed
        elif self.gauge is None:
            batch = CPU_BATCH_SIZE
        else:
            length = max(1, length)
            if length > self.measured_length:
                self._measure(length, forward)
            per_sequence = max(1.0, self.per_token * length)
            batch = int(self.gauge.available() * HEADROOM // per_sequence)
            batch = max(1, min(batch, self.max_batch, max(1, count)))
            log.debug("eval batch %d for %d %s requests of up to %d tokens (%.0f MiB a sequence)",
                      batch, count, kind, length, per_sequence / 2**20)
        self.chosen[kind] = batch
        return batch

    def _measure(self, length: int, forward: Forward) -> None:
        assert self.gauge is not None
        gauge = self.gauge

        def probe(batch: int) -> int:
            self.probes.append((batch, length))
            return gauge.peak_during(lambda: forward(batch, length))

        probe(1)  # first pass: one-time allocations (workspaces, caches) stay out of the difference
        one, two = probe(1), probe(2)
        # The second sequence's cost; at least the first's share of it if the difference is lost
        # in allocator rounding.
        per_sequence = max(two - one, one / 2, 1)
        self.per_token = max(self.per_token, per_sequence / length)
        self.measured_length = length
        log.debug("measured %.0f MiB per evaluation sequence of %d tokens", per_sequence / 2**20, length)

    def shrink(self) -> bool:
        """After running out of memory: cap later batches at half the largest chosen so far.
        False when there is nothing to shrink (a configured batch, a CPU, or batches of 1)."""
        largest = max(self.chosen.values(), default=1)
        if self.fixed is not None or self.gauge is None or largest <= 1:
            return False
        self.max_batch = largest // 2
        return True
