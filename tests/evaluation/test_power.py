"""The resolvable difference against a simulation of the paired comparison it stands for."""

from __future__ import annotations

import numpy as np
import pytest
from qsweep.evaluation.power import discordance, minimum_detectable_difference
from scipy import stats


def simulated_power(difference: float, questions: int, seeds: int, q: float, runs: int = 4000,
                    seed: int = 0) -> float:
    """Paired 0/1 scores whose discordant share is q and whose accuracies differ by
    ``difference``: how often a two-sided paired z-test at 5% rejects."""
    rng = np.random.default_rng(seed)
    n = questions * seeds
    # a discordant pair favours A with probability (1 + difference / q) / 2
    favour_a = (1 + difference / q) / 2
    discordant = rng.binomial(n, q, size=runs)
    wins = rng.binomial(discordant, favour_a)
    d_sum = wins - (discordant - wins)
    mean = d_sum / n
    variance = (discordant / n - mean**2) / n
    z = np.divide(mean, np.sqrt(variance), out=np.zeros(runs), where=variance > 0)
    return float(np.mean(np.abs(z) > stats.norm.ppf(0.975)))


@pytest.mark.parametrize(("questions", "seeds", "q"), [(570, 3, 0.12), (13752, 1, 0.12), (106, 2, 0.3),
                                                        (2000, 5, 0.05)])
def test_at_the_resolvable_difference_the_test_has_80_percent_power(questions: int, seeds: int,
                                                                     q: float) -> None:
    resolution = minimum_detectable_difference(questions, seeds, q)
    assert simulated_power(resolution.difference, questions, seeds, q) == pytest.approx(0.8, abs=0.03)
    # half the difference is missed most of the time
    assert simulated_power(resolution.difference / 2, questions, seeds, q) < 0.4


def test_more_questions_or_seeds_resolve_less() -> None:
    base = minimum_detectable_difference(570, 1).difference
    assert minimum_detectable_difference(570 * 4, 1).difference == pytest.approx(base / 2)
    assert minimum_detectable_difference(570, 4).difference == pytest.approx(base / 2)


def test_the_line_says_what_it_assumed() -> None:
    line = minimum_detectable_difference(13752, 1).describe()
    assert line.startswith("detects an MMLU difference of 0.8 points or more")
    assert "12% of answers differing between rows, assumed" in line


def test_discordance_counts_differing_answers() -> None:
    assert discordance([[1, 0, 1, 1]], [[1, 1, 0, 1]]) == 0.5
    with pytest.raises(ValueError):
        minimum_detectable_difference(0, 1)
