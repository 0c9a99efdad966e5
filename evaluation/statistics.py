"""Uncertainty for ablation tables: confidence intervals over seeds and paired comparisons.

The QLoRA paper reports single runs; MMLU accuracy moves by a point or more between seeds, so
every number in a qsweep report carries its spread:

* :func:`t_interval` — mean of a cell's seeds with a Student-t confidence interval;
* :func:`paired_t_test` — two rows compared over the same (cell, seed) pairs;
* :func:`paired_permutation_test` — two models compared over the same questions (0/1 scores),
  with a sign-flip permutation p-value and a bootstrap interval on the difference.

All computation is scipy's; this module only shapes inputs and results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """A mean with its confidence interval (``low``/``high`` are NaN below two values)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def format(self, scale: float = 1.0, digits: int = 2) -> str:
        """``53.1 ± 0.8`` (times ``scale``: 100 turns accuracies into percentages)."""
        if math.isnan(self.mean):
            return "-"
        mean = f"{self.mean * scale:.{digits}f}"
        return mean if math.isnan(self.half_width) else f"{mean} ± {self.half_width * scale:.{digits}f}"


@dataclass(frozen=True)
class Comparison:
    """Row A against row B on paired observations: mean difference A - B, its interval, p."""

    difference: Estimate
    p_value: float
    test: str


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean of ``values`` with the t-interval ``mean ± t(n-1) * s / sqrt(n)``."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(data.mean())
    if data.size < 2:
        return Estimate(mean, math.nan, math.nan, 1, confidence)
    sem = float(stats.sem(data))
    if sem == 0:  # all values equal: no spread
        return Estimate(mean, mean, mean, int(data.size), confidence)
    low, high = stats.t.interval(confidence, data.size - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high), int(data.size), confidence)


def paired_t_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Paired t-test of ``a`` against ``b`` (the same cells and seeds, in the same order)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    estimate = t_interval(differences, confidence)
    if len(differences) < 2:
        return Comparison(estimate, math.nan, "paired t-test")
    if np.ptp(differences) == 0:  # zero variance: t is undefined (a deterministic difference)
        return Comparison(estimate, math.nan, "no t-test: the difference is the same in every pair")
    result = stats.ttest_rel(a, b)
    p_value = float(result.pvalue) if math.isfinite(result.pvalue) else 1.0
    return Comparison(estimate, p_value, "paired t-test")


def paired_permutation_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95,
                            n_resamples: int = 9999, seed: int = 0) -> Comparison:
    """Two models on the same questions: sign-flip permutation p-value, bootstrap interval.

    ``a`` and ``b`` are per-question scores (1 correct, 0 wrong) in the same question order.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean = float((x - y).mean())

    def mean_difference(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(first - second, axis=axis)

    permuted = stats.permutation_test((x, y), mean_difference, permutation_type="samples",
                                      vectorized=True, n_resamples=n_resamples, rng=seed)
    interval = stats.bootstrap((x, y), mean_difference, paired=True, vectorized=True,
                               n_resamples=n_resamples, confidence_level=confidence,
                               method="percentile", rng=seed).confidence_interval
    return Comparison(Estimate(mean, float(interval.low), float(interval.high), len(x), confidence),
                      float(permuted.pvalue), "paired permutation test")
