"""How well a sweep kept its GPUs busy: compute time against the GPU time it held.

A sweep holds its GPUs for its makespan; of that GPU time only the trials' compute phases
(``qsweep.trainers.phases.COMPUTE_PHASES``: training and evaluating) are what the sweep is for —
start-up, loading, recording, waiting and idle GPUs are overhead. :class:`Usage` sums the
compute of the trials one driver ran and compares the makespan with the ideal: all of that
compute packed onto the sweep's GPUs. On a cluster without GPUs the same holds for trial slots.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from qsweep.trainers.phases import COMPUTE_PHASES, PHASES


@dataclass(frozen=True)
class UsageSummary:
    """The figures ``qsweep run`` prints at its end."""

    unit: str
    """``GPU``, or ``slot`` on a cluster without GPUs."""
    capacity: float
    """GPUs (slots) the sweep runs on at once."""
    trials: int
    """Trial runs collected by this driver (a retried trial counts each time)."""
    compute_s: float
    """GPU-seconds (slot-seconds) spent training or evaluating."""
    makespan_s: float
    phase_medians: dict[str, float]
    """Median seconds of each phase over the trial runs that reported it."""

    @property
    def held_s(self) -> float:
        """GPU-seconds the sweep held: its GPUs for its makespan."""
        return self.capacity * self.makespan_s

    @property
    def ideal_s(self) -> float:
        """The compute spread over the GPUs: the shortest possible makespan."""
        return self.compute_s / self.capacity if self.capacity else 0.0

    @property
    def busy_share(self) -> float:
        """Share of the held GPU-seconds spent training or evaluating."""
        return self.compute_s / self.held_s if self.held_s > 0 else 0.0

    @property
    def makespan_ratio(self) -> float:
        """Makespan over its ideal (1.0: no overhead at all)."""
        return self.makespan_s / self.ideal_s if self.ideal_s > 0 else float("inf")

    def metrics(self) -> dict[str, float]:
        """MLflow metrics for the sweep's parent run."""
        return {"sweep/makespan_s": self.makespan_s, "sweep/ideal_makespan_s": self.ideal_s,
                "sweep/busy_share": self.busy_share, "sweep/held_gpu_s": self.held_s,
                "sweep/compute_gpu_s": self.compute_s}


@dataclass
class Usage:
    """Accumulates the compute of the trials one driver runs.

    Args:
        compute_gpus: GPUs a trial has to itself while it computes (0 on a cluster without
            GPUs: it counts as one slot).
        capacity: GPUs the sweep runs on at once (trials at a time x GPUs each asks for; slots
            on a cluster without GPUs).
    """

    compute_gpus: float
    capacity: float
    compute_s: float = 0.0
    trials: int = 0
    phases: dict[str, list[float]] = field(default_factory=dict)

    def add(self, phases: dict[str, float]) -> None:
        """One trial run's phases (empty for a run that reported none, e.g. a crashed worker)."""
        self.trials += 1
        weight = self.compute_gpus if self.compute_gpus > 0 else 1.0
        self.compute_s += sum(phases.get(name, 0.0) for name in COMPUTE_PHASES) * weight
        for name in PHASES:
            if name in phases:
                self.phases.setdefault(name, []).append(phases[name])

    def summary(self, makespan_s: float) -> UsageSummary:
        return UsageSummary(unit="GPU" if self.compute_gpus > 0 else "slot", capacity=self.capacity,
                            trials=self.trials, compute_s=self.compute_s, makespan_s=makespan_s,
                            phase_medians={name: statistics.median(values)
                                           for name, values in self.phases.items()})
