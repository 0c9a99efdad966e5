"""Uncertainty for ablation tables: confidence intervals over seeds and paired comparisons.

The QLoRA paper reports single runs; MMLU accuracy moves by a point or more between seeds, so
every number in a qsweep report carries its spread:

* :func:`t_interval` — mean of a cell's seeds with a Student-t confidence interval;
* :func:`paired_t_test` — two rows compared over the same (cell, seed) pairs;
* :func:`item_interval` — a cell's accuracy or corpus perplexity over its seeds and items
  (questions, documents), with a two-level bootstrap interval;
* :func:`paired_item_comparison` — two rows over the same items and seeds: difference (or
  perplexity ratio), paired bootstrap interval, permutation p-value over whole items.

Tests and t-intervals are scipy's; the two-level bootstrap (seeds, then items), which scipy's
``bootstrap`` does not offer, is a few lines of numpy here.
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
    note: str = ""
    """What else the comparison can say (for accuracies: the difference it could resolve)."""
    item_level: bool = False
    """Over items (questions, documents) and seeds; else over (column, seed) results."""
    ratio: bool = False
    """``difference`` holds the ratio A / B (perplexities), not A - B."""


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


# --- item level: questions and documents, and seeds -------------------------------------------

ACCURACY, PERPLEXITY = "accuracy", "perplexity"
ITEM_METHOD = "bootstrap over seeds and items"


def _statistic(values: np.ndarray, weights: np.ndarray | None, kind: str) -> np.ndarray:
    """Per-seed-row statistic over the last axis (items), averaged over the seed axis (-2).

    ``values`` is (..., seeds, items): accuracy, the mean of 0/1 scores; perplexity, the
    corpus-level perplexity exp(-sum log-likelihood / sum words) of each seed's documents.
    """
    if kind == ACCURACY:
        per_seed = values.mean(axis=-1)
    elif kind == PERPLEXITY:
        assert weights is not None
        per_seed = np.exp(-values.sum(axis=-1) / weights.sum(axis=-1))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return per_seed.mean(axis=-1)


def item_replicates(values: np.ndarray, weights: np.ndarray | None, kind: str, *,
                    n_resamples: int = 2000, seed: int = 0, chunk: int = 100) -> np.ndarray:
    """Two-level bootstrap replicates of a cell's statistic: each replicate draws seeds with
    replacement and items with replacement (the same items for every drawn seed).

    ``values``: (seeds, items); ``weights``: (items,) words or bytes for perplexity. The draws
    depend only on (seed, shape), so two rows with the same items and seeds get the same ones.
    """
    seeds, items = values.shape
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        seed_draw = rng.integers(0, seeds, size=(count, seeds))
        item_draw = rng.integers(0, items, size=(count, items))
        picked = values[seed_draw[:, :, None], item_draw[:, None, :]]  # (count, seeds, items)
        w = None if weights is None else np.broadcast_to(weights[item_draw][:, None, :], picked.shape)
        out.append(_statistic(picked, w, kind))
    return np.concatenate(out)


def item_interval(values: np.ndarray, weights: np.ndarray | None = None, kind: str = ACCURACY, *,
                  confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Estimate:
    """A cell's estimate over its seeds (rows) and items (columns), with the percentile
    interval of :func:`item_replicates`: inside [0, 1] for accuracies by construction; with
    one seed, an interval over items alone. ``n`` is seeds x items."""
    values = np.asarray(values, dtype=float)
    w = None if weights is None else np.asarray(weights, dtype=float)
    if values.ndim != 2 or values.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, confidence)
    mean = float(_statistic(values, w, kind))
    replicates = item_replicates(values, w, kind, n_resamples=n_resamples, seed=seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return Estimate(mean, float(low), float(high), int(values.size), confidence)


def paired_item_comparison(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None,
                           kind: str = ACCURACY, *, confidence: float = 0.95, n_resamples: int = 1999,
                           seed: int = 0) -> Comparison:
    """Row A against row B over the same items and seeds (``a``, ``b``: (seeds, items), the
    same order).

    Accuracy: the difference A - B. Perplexity: the ratio A / B of the corpus perplexities
    (a difference of perplexities scales with the corpus's level, which resampling documents
    moves). The interval is a paired two-level bootstrap (the same draws for both rows); the
    p-value that of a permutation test that swaps A and B on whole items, on every seed at
    once (scipy's ``permutation_test``, exact when there are few items): an item's seeds are
    not independent of each other — at step 0 they are the same model.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired items differ in shape: {a.shape} and {b.shape}")
    w = None if weights is None else np.asarray(weights, dtype=float)
    items = a.shape[1]

    def between(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return x / y if kind == PERPLEXITY else x - y

    def contrast(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        return between(_statistic(first, w, kind), _statistic(second, w, kind))

    observed = float(contrast(a, b))
    draws = min(n_resamples, 4000)
    spread = between(item_replicates(a, w, kind, n_resamples=draws, seed=seed),
                     item_replicates(b, w, kind, n_resamples=draws, seed=seed))
    tail = (1 - confidence) / 2
    low, high = np.quantile(spread, [tail, 1 - tail])
    both = np.concatenate([a, b], axis=1)  # item i of A at column i, of B at column items + i

    def statistic(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
        # scipy swaps first[..., i] and second[..., i]: whole items, every seed with them
        ia, ib = first.astype(int), second.astype(int)  # (batch..., items)
        picked_a = np.moveaxis(both[:, ia], 0, -2)  # (batch..., seeds, items)
        picked_b = np.moveaxis(both[:, ib], 0, -2)
        return np.log(contrast(picked_a, picked_b)) if kind == PERPLEXITY else contrast(picked_a, picked_b)

    indices = (np.arange(items, dtype=float), np.arange(items, 2 * items, dtype=float))
    permuted = stats.permutation_test(indices, statistic, permutation_type="samples", vectorized=True,
                                      n_resamples=n_resamples, batch=200, rng=seed)
    what = "ratio of corpus perplexities" if kind == PERPLEXITY else "difference"
    return Comparison(Estimate(observed, float(low), float(high), int(a.size), confidence),
                      float(permuted.pvalue), f"{what} over {items} items x {a.shape[0]} seeds; paired "
                                              f"permutation test over items (every seed swapped together); "
                                              f"interval: {ITEM_METHOD}",
                      item_level=True, ratio=kind == PERPLEXITY)
