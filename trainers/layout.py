"""How an optimizer step's examples are laid out into micro-batches, when the config leaves the
micro-batch to the trainer (``train.micro_batch_size: auto``).

The config fixes the examples per step (``train.batch_size``); the trainer picks the largest
divisor of it whose micro-batch fits the memory budget (``train.max_memory_gib``, default the
GPU's memory less max(2 GiB, 10%)): first by the cost model's estimate of the worst micro-batch
the data can make, then by one forward and backward pass of it (the probe; the random state is
restored after it). Padded, the worst is as many copies of the longest example as the
micro-batch holds; packed (``train.packing``), that many of the longest examples end to end in
one row. On a CPU the whole step is one micro-batch.

With auto, which examples a step sees does not depend on the micro-batch: step ``s`` takes
examples ``s x batch_size`` to ``(s + 1) x batch_size - 1`` of the stream of seeded epoch
permutations (:class:`StepOrder`), and the micro-batches are its consecutive slices. A
checkpoint records the micro-batch it ran with, and a resumed run keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from qsweep.trainers.cost_model import GIB
from qsweep.trainers.examples import BatchOrder, to_device
from qsweep.trainers.packing import packed_attention


@dataclass(frozen=True)
class BatchLayout:
    """The micro-batch a run trains with and the accumulation that makes up its step."""

    micro_batch_size: int
    grad_accum_steps: int
    chosen: str
    """How: ``configured``, ``kept from the checkpoint``, or what auto measured."""


def default_budget_bytes(device: torch.device) -> int:
    """The GPU's memory less max(2 GiB, 10%)."""
    total = torch.cuda.get_device_properties(device).total_memory
    return int(total - max(2 * GIB, total // 10))


class StepOrder(BatchOrder):
    """Micro-batch ``position`` under an auto layout: a slice of the stream of examples that
    :class:`~qsweep.trainers.examples.BatchOrder`'s seeded epoch permutations make, not cut at
    epoch ends, so that a step's examples do not depend on the micro-batch."""

    def micro_batch(self, position: int) -> list[int]:
        start = position * self.micro_batch_size
        return [int(self._permutation(g // self.num_examples)[g % self.num_examples])
                for g in range(start, start + self.micro_batch_size)]

    def epoch(self, position: int) -> float:
        """Fractional epochs completed after ``position`` micro-batches."""
        return position * self.micro_batch_size / self.num_examples


def probe_peak_bytes(model: Any, batch: dict[str, Any], device: torch.device,
                     autocast: Any, packed: bool = False) -> int | None:
    """Peak CUDA bytes of one forward and backward pass of ``batch``, in training mode (gradient
    checkpointing and fused losses act only there); None if it ran out of memory. Gradients are
    cleared, the mode and the random state restored afterwards: training goes on as if the probe
    had not run."""
    cpu_rng, cuda_rng = torch.get_rng_state(), torch.cuda.get_rng_state_all()
    was_training = model.training
    model.train()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        on_device = to_device(batch, device)
        with packed_attention(model, packed):
            with autocast:
                loss = model(**on_device).loss
            loss.backward()
        del loss, on_device
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    except torch.OutOfMemoryError:
        return None
    finally:
        model.train(was_training)
        model.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state_all(cuda_rng)
        torch.cuda.empty_cache()
