"""Report statistics against independent computations on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qsweep.evaluation.statistics import paired_item_comparison, paired_t_test, t_interval
from scipy import stats


def test_t_interval_matches_the_textbook_formula() -> None:
    values = [0.512, 0.498, 0.531, 0.505, 0.520]
    estimate = t_interval(values)
    mean = sum(values) / 5
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    half = 2.7764451051977987 * s / math.sqrt(5)  # t(0.975, 4)
    assert estimate.mean == pytest.approx(mean)
    assert (estimate.low, estimate.high) == pytest.approx((mean - half, mean + half))
    assert estimate.n == 5 and estimate.half_width == pytest.approx(half)
    assert estimate.format(scale=100) == f"{mean * 100:.2f} ± {half * 100:.2f}"


def test_t_interval_edge_cases() -> None:
    single = t_interval([0.4])
    assert single.mean == 0.4 and math.isnan(single.low) and single.format(100) == "40.00"
    constant = t_interval([0.3, 0.3, 0.3])
    assert (constant.low, constant.high) == (0.3, 0.3)
    assert t_interval([]).format() == "-"
    assert t_interval([1.0, 2.0, 3.0], confidence=0.99).half_width > t_interval([1.0, 2.0, 3.0]).half_width


def test_paired_t_test_matches_scipy_and_the_difference_interval() -> None:
    nf4 = [0.531, 0.542, 0.525, 0.538]
    fp4 = [0.520, 0.529, 0.519, 0.530]
    result = paired_t_test(nf4, fp4)
    assert result.p_value == pytest.approx(stats.ttest_rel(nf4, fp4).pvalue)
    differences = np.subtract(nf4, fp4)
    assert result.difference.mean == pytest.approx(differences.mean())
    half = stats.t.ppf(0.975, 3) * differences.std(ddof=1) / 2
    assert result.difference.half_width == pytest.approx(half)
    with pytest.raises(ValueError, match="differ in length"):
        paired_t_test([1.0], [1.0, 2.0])
    # An untuned base is deterministic: the same difference for every seed has no t statistic.
    same = paired_t_test([6.64, 6.64, 6.64], [6.99, 6.99, 6.99])
    assert math.isnan(same.p_value) and "same in every pair" in same.test
    assert same.difference.mean == pytest.approx(-0.35) and same.difference.half_width == 0


def test_paired_permutation_test_on_questions() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random(400)
    a = (truth < 0.62).astype(float)  # model A answers 62% right
    b = (truth < 0.50).astype(float)  # model B, a subset of A's right answers
    result = paired_item_comparison(a[None, :], b[None, :], n_resamples=2000)  # one seed
    assert result.difference.mean == pytest.approx(a.mean() - b.mean())
    # Every disagreement (about 48 questions) favours A: almost no sign-flip is as extreme.
    assert result.p_value < 0.002
    assert result.difference.low < result.difference.mean < result.difference.high
    same = paired_item_comparison(a[None, :], a[None, :], n_resamples=500)
    assert same.difference.mean == 0 and same.p_value == 1.0
