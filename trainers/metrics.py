"""What a training run reports: per-step metrics, the final result, and peak memory."""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from qsweep.trainers.footprint import WeightFootprint
from qsweep.trainers.status import TrialStatus

TrainStatus = Literal[TrialStatus.FINISHED, TrialStatus.NAN]


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step, as the ``on_step`` callback receives it."""

    step: int
    loss: float
    """Mean cross-entropy over the step's target tokens (all micro-batches together)."""
    learning_rate: float
    """Learning rate this step used."""
    grad_norm: float
    """Global gradient norm before clipping."""
    tokens: int
    """Non-padding tokens processed in the step."""
    tokens_per_s: float
    step_time_s: float
    peak_memory_bytes: int
    """CUDA max allocated on GPU; peak process RSS on CPU (see ``TrainResult.memory_kind``)."""
    epoch: float
    """Passes over the training examples so far."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """How a training run ended. ``status`` is ``finished`` or ``nan`` (a non-finite loss)."""

    status: TrainStatus
    reason: str
    steps: int
    """Optimizer steps completed (including those before a resume)."""
    final_loss: float | None
    tokens_per_s: float
    """Tokens over seconds of the steps this process ran."""
    peak_memory_bytes: int
    memory_kind: str
    footprint: WeightFootprint
    trainable_params: int
    adapter_dir: Path | None
    resumed_from_step: int = 0
    train_time_s: float = 0.0
    micro_batch_size: int = 0
    """The micro-batch it trained with (chosen when ``train.micro_batch_size`` is auto)."""
    grad_accum_steps: int = 0
    packed: bool = False
    """Whether it packed its micro-batches (chosen when ``train.packing`` is auto)."""
    history: list[StepMetrics] = field(default_factory=list, repr=False)
    """Metrics of the steps this process ran."""
    damaged_checkpoints: list[str] = field(default_factory=list)
    """Checkpoints found damaged when resuming and set aside (``"step-000004: <what>"``)."""

    def summary_metrics(self) -> dict[str, float]:
        """The run's summary as metrics: final loss (NaN when no step ran), throughput, memory,
        model size."""
        return {
            "train/final_loss": float("nan") if self.final_loss is None else self.final_loss,
            "train/mean_tokens_per_s": self.tokens_per_s,
            "train/peak_memory_bytes": float(self.peak_memory_bytes),
            "model/base_weight_bytes": float(self.footprint.total_bytes),
            "model/quantized_bytes": float(self.footprint.quantized_bytes),
            "model/trainable_params": float(self.trainable_params),
        }


class MemoryMeter:
    """Peak memory of the device that trains: CUDA max allocated, or the process's peak RSS.

    On CPU the peak RSS covers the whole process lifetime (the kernel keeps no resettable
    counter), so it includes model loading.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"
        self._peak = 0

    def reset(self) -> None:
        self._peak = 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int:
        """The peak so far; on CUDA a running maximum of the readings, so that a reset of the
        counter by someone else (an evaluation measuring its own memory) loses nothing read."""
        if self.device.type == "cuda":
            self._peak = max(self._peak, int(torch.cuda.max_memory_allocated(self.device)))
            return self._peak
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
