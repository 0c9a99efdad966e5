"""The smallest difference a sweep can resolve, before it runs.

Two rows of a report (NF4+DQ against FP4, say) are compared over the same questions and seeds
(``qsweep.evaluation.statistics.paired_item_comparison``). A question contributes a difference
of +1, -1 or 0: only questions that the two rows answer differently (the discordant ones) carry
information, so the variance of a paired difference is about the discordant share ``q`` (less
the squared difference, negligible at a few points). With ``n`` questions x seeds pairs, a
two-sided test at level ``alpha`` detects with probability ``power`` a difference of at least::

    (z[1 - alpha/2] + z[power]) * sqrt(q / n)

(the normal approximation of the paired test; ``tests/evaluation/test_power.py`` checks it
against a simulation). ``q`` is assumed (:data:`ASSUMED_DISCORDANCE`) or measured on a finished
pilot sweep (:func:`discordance`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

ASSUMED_DISCORDANCE = 0.12
"""Share of questions two quantizations of one fine-tuned model answer differently, assumed when
no pilot sweep is given (a planning figure; a pilot's measured share replaces it)."""


@dataclass(frozen=True)
class Resolution:
    """What a comparison of two rows can resolve."""

    difference: float
    """Smallest true difference (as a fraction: 0.013 is 1.3 points) detected at ``power``."""
    questions: int
    seeds: int
    discordance: float
    source: str
    """Where ``discordance`` comes from: assumed, measured on the pilot, measured here."""
    alpha: float = 0.05
    power: float = 0.8

    def describe(self, what: str = "an MMLU difference") -> str:
        return (f"detects {what} of {self.difference * 100:.1f} points or more between two rows "
                f"({(1 - self.alpha) * 100:.0f}% confidence, {self.power * 100:.0f}% power; "
                f"{self.questions:,} questions x {self.seeds} seeds, paired; {self.discordance * 100:.0f}% "
                f"of answers differing between rows, {self.source})")


def minimum_detectable_difference(questions: int, seeds: int, discordance: float = ASSUMED_DISCORDANCE,
                                  *, alpha: float = 0.05, power: float = 0.8,
                                  source: str = "assumed") -> Resolution:
    """See the module docstring; ``questions`` per trial, ``seeds`` per row."""
    if questions < 1 or seeds < 1:
        raise ValueError(f"need at least one question and one seed, got {questions} and {seeds}")
    if not 0 < discordance <= 1:
        raise ValueError(f"discordance must be in (0, 1], got {discordance}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    difference = z * math.sqrt(discordance / (questions * seeds))
    return Resolution(difference, questions, seeds, discordance, source, alpha, power)


def discordance(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]]) -> float:
    """Share of (seed, question) pairs on which two rows' 0/1 scores differ (same order)."""
    pairs = [(a, b) for row_a, row_b in zip(first, second, strict=True)
             for a, b in zip(row_a, row_b, strict=True)]
    if not pairs:
        raise ValueError("no paired questions")
    return sum(a != b for a, b in pairs) / len(pairs)
