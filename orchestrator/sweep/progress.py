"""What a sweep has done so far: the tally that progress displays and the final summary read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from qsweep.orchestrator.sweep.usage import UsageSummary


@dataclass
class Tally:
    """Trials ended (by status), running and resumed; the best objective; GPU use at the end."""

    total: int
    done: dict[str, int] = field(default_factory=dict)
    """Ended trials by status: finished, pruned, failed, nan."""
    running: int = 0
    best: float | None = None
    best_key: str | None = None
    durations: list[float] = field(default_factory=list)
    resumed: int = 0
    """Trials an earlier driver left running that this one took over."""
    retried: int = 0
    """Failed trials this driver runs again (``--retry-failed``)."""
    usage: UsageSummary | None = None
    """How this driver's trials used the GPUs; set when the sweep ends."""

    @property
    def ended(self) -> int:
        return sum(self.done.values())

    def count(self, status: str) -> None:
        self.done[status] = self.done.get(status, 0) + 1

    def offer_best(self, key: str, value: float, maximize: bool) -> None:
        """Keep ``value`` as the best objective if it beats the best so far."""
        if self.best is None or (value > self.best if maximize else value < self.best):
            self.best, self.best_key = value, key

    def eta_s(self, concurrency: int) -> float | None:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        remaining = self.total - self.ended
        return mean * remaining / max(1, min(concurrency, remaining or 1))


Observer = Callable[[Tally], None]
