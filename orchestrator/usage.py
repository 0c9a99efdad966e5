"""How well a sweep kept its accelerators busy: held time against training and evaluating.

Every trial holds its GPUs from submission until the driver collects it; of that time only
the compute phases (``trainers.phases.COMPUTE_PHASES``: training and evaluating) are what the
sweep is for. :class:`Usage` sums both over the trials one driver ran and compares the
makespan with the ideal — all compute packed onto the GPUs the sweep runs on, with no
start-up, loading or gaps. On a cluster without GPUs the same holds for trial slots.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from trainers.phases import COMPUTE_PHASES, PHASES


@dataclass(frozen=True)
class UsageSummary:
    """The figures ``qsweep run`` prints at its end."""

    unit: str
    """``GPU``, or ``slot`` on a cluster without GPUs."""
    capacity: float
    """GPUs (slots) the sweep runs on at once."""
    trials: int
    """Trial attempts collected by this driver."""
    held_s: float
    """GPU-seconds (slot-seconds) held by those attempts."""
    compute_s: float
    """GPU-seconds of them spent training or evaluating."""
    makespan_s: float
    ideal_s: float
    """The compute spread over ``capacity``: the shortest possible makespan."""
    phase_medians: dict[str, float]
    """Median seconds of each phase over the attempts that reported it."""

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
    """Accumulates held and compute time of the trials one driver runs.

    Args:
        per_trial: GPUs each trial asks for (0 on a cluster without GPUs: one slot each).
        concurrency: trials at a time.
    """

    per_trial: float
    concurrency: int
    held_s: float = 0.0
    compute_s: float = 0.0
    trials: int = 0
    phases: dict[str, list[float]] = field(default_factory=dict)

    @property
    def unit(self) -> str:
        return "GPU" if self.per_trial > 0 else "slot"

    @property
    def _weight(self) -> float:
        return self.per_trial if self.per_trial > 0 else 1.0

    def add(self, held_wall_s: float, phases: dict[str, float]) -> None:
        """One trial attempt: how long it held its GPUs, and its phases (may be empty)."""
        self.trials += 1
        self.held_s += held_wall_s * self._weight
        self.compute_s += sum(phases.get(name, 0.0) for name in COMPUTE_PHASES) * self._weight
        for name in PHASES:
            if name in phases:
                self.phases.setdefault(name, []).append(phases[name])

    def summary(self, makespan_s: float) -> UsageSummary:
        capacity = self.concurrency * self._weight
        return UsageSummary(unit=self.unit, capacity=capacity, trials=self.trials, held_s=self.held_s,
                            compute_s=self.compute_s, makespan_s=makespan_s,
                            ideal_s=self.compute_s / capacity if capacity else 0.0,
                            phase_medians={name: statistics.median(values)
                                           for name, values in self.phases.items()})
