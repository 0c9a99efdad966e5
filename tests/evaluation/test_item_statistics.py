"""Item-level statistics against direct computations: the two-level bootstrap against a plain
numpy loop with the same draws, the paired permutation test against exact enumeration, and
intervals that stay inside [0, 1] on adversarial inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from qsweep.evaluation.statistics import (
    ACCURACY,
    PERPLEXITY,
    item_interval,
    item_replicates,
    paired_item_comparison,
)


def direct_replicates(values: np.ndarray, weights, kind: str, n_resamples: int, seed: int) -> np.ndarray:
    """The bootstrap written out: for each replicate, draw seeds, then items, then average."""
    seeds, items = values.shape
    rng = np.random.default_rng(seed)
    out = []
    chunk = 100
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        seed_draws = rng.integers(0, seeds, size=(count, seeds))
        item_draws = rng.integers(0, items, size=(count, items))
        for s_draw, i_draw in zip(seed_draws, item_draws, strict=True):
            per_seed = []
            for s in s_draw:
                if kind == ACCURACY:
                    per_seed.append(sum(values[s, i] for i in i_draw) / items)
                else:
                    total = sum(weights[i] for i in i_draw)
                    per_seed.append(math.exp(-sum(values[s, i] for i in i_draw) / total))
            out.append(sum(per_seed) / len(per_seed))
    return np.array(out)


def test_the_bootstrap_is_the_written_out_one() -> None:
    rng = np.random.default_rng(3)
    scores = (rng.random((3, 40)) < 0.6).astype(float)
    np.testing.assert_allclose(item_replicates(scores, None, ACCURACY, n_resamples=250, seed=7),
                               direct_replicates(scores, None, ACCURACY, 250, 7))
    loglikelihoods, words = -rng.gamma(4, 10, (2, 30)), rng.integers(3, 50, 30).astype(float)
    np.testing.assert_allclose(item_replicates(loglikelihoods, words, PERPLEXITY, n_resamples=120, seed=1),
                               direct_replicates(loglikelihoods, words, PERPLEXITY, 120, 1))


def test_the_interval_is_the_replicates_percentiles_around_the_plain_estimate() -> None:
    rng = np.random.default_rng(5)
    scores = (rng.random((2, 60)) < 0.3).astype(float)
    estimate = item_interval(scores, n_resamples=400, seed=2)
    replicates = direct_replicates(scores, None, ACCURACY, 400, 2)
    assert estimate.mean == pytest.approx(scores.mean())
    assert (estimate.low, estimate.high) == pytest.approx(tuple(np.quantile(replicates, [0.025, 0.975])))
    assert estimate.n == 120


@pytest.mark.parametrize("scores", [
    np.ones((3, 50)), np.zeros((3, 50)), np.ones((1, 1)), np.array([[1.0]] * 4), np.array([[0.0, 1.0]]),
    (np.arange(200).reshape(2, 100) % 97 == 0).astype(float),
], ids=["all correct", "all wrong", "one question one seed", "one question", "one seed", "rare successes"])
def test_accuracy_intervals_stay_inside_0_and_1(scores: np.ndarray) -> None:
    estimate = item_interval(scores, n_resamples=300)
    assert 0.0 <= estimate.low <= estimate.mean <= estimate.high <= 1.0


def test_one_seed_still_gets_a_question_level_interval() -> None:
    scores = (np.arange(100) % 3 == 0).astype(float)[None, :]
    estimate = item_interval(scores, n_resamples=500)
    assert estimate.low < estimate.mean < estimate.high
    # about the binomial standard error of 100 questions at p = 0.34
    assert estimate.half_width == pytest.approx(1.96 * math.sqrt(0.34 * 0.66 / 100), rel=0.25)


def test_the_permutation_p_value_is_the_exact_one_over_whole_items() -> None:
    a = np.array([[1, 1, 0, 1, 1, 1], [1, 0, 1, 1, 1, 1.0]])
    b = np.array([[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 1, 1.0]])
    comparison = paired_item_comparison(a, b, n_resamples=5000)
    observed = (a - b).mean()
    d = a - b  # (seeds, items): an item's seeds are swapped together
    flips = [np.mean(np.array(signs)[None, :] * d) for signs in itertools.product([1, -1], repeat=d.shape[1])]
    exact = np.mean([abs(f) >= abs(observed) - 1e-12 for f in flips])
    assert comparison.difference.mean == pytest.approx(observed)
    assert comparison.p_value == pytest.approx(exact)


def test_a_perplexity_comparison_swaps_whole_documents() -> None:
    rng = np.random.default_rng(0)
    words = rng.integers(5, 30, 6).astype(float)
    a = -rng.gamma(4, 10, (1, 6))
    b = a - words * 0.05  # B is worse on every document
    comparison = paired_item_comparison(a, b, words, PERPLEXITY, n_resamples=5000)
    total = words.sum()

    def log_ratio(x: np.ndarray, y: np.ndarray) -> float:
        return (-x.sum() / total) - (-y.sum() / total)

    observed = log_ratio(a, b)
    swaps = []
    for mask in itertools.product([False, True], repeat=6):
        m = np.array(mask)[None, :]
        swaps.append(log_ratio(np.where(m, b, a), np.where(m, a, b)))
    exact = np.mean([abs(s) >= abs(observed) - 1e-12 for s in swaps])
    assert comparison.difference.mean == pytest.approx(math.exp(observed))  # the ratio A / B
    assert comparison.p_value == pytest.approx(exact)
    assert comparison.difference.high < 1  # A's perplexity is lower: resolved


def test_identical_seeds_count_once() -> None:
    """At step 0 every seed is the same model: two copies of the seeds must not halve p."""
    rng = np.random.default_rng(4)
    a = (rng.random((1, 300)) < 0.55).astype(float)
    b = a.copy()
    b[0, :30] = 0
    once = paired_item_comparison(a, b)
    twice = paired_item_comparison(np.vstack([a, a]), np.vstack([b, b]))
    assert twice.p_value == pytest.approx(once.p_value)
    assert twice.difference.mean == pytest.approx(once.difference.mean)


def test_a_difference_of_one_point_is_resolved_with_enough_questions() -> None:
    rng = np.random.default_rng(11)
    truth = rng.random(5000) < 0.5
    a = np.vstack([truth] * 2).astype(float)
    b = a.copy()
    b[:, :100] = 0  # B gets wrong the questions among the first 100 that A gets right (about 1 point)
    comparison = paired_item_comparison(a, b)
    assert comparison.difference.mean > 0 and comparison.p_value < 0.01
    assert comparison.difference.low > 0
