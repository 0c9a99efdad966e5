"""Aggregation of lm-eval results, checked against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from qsweep.evaluation.mmlu_categories import SUBJECT_CATEGORIES
from qsweep.evaluation.results import subject_task, summarize


def lm_eval_like(scores: dict[str, list[int]], family: str = "mmlu_offline") -> dict:
    """What lm-eval's evaluate() returns for subject tasks with these 0/1 scores."""
    results, n_samples = {}, {}
    for subject, values in scores.items():
        task = f"{family}_{subject}"
        results[task] = {"alias": subject, "acc,none": float(np.mean(values))}
        n_samples[task] = {"original": 100, "effective": len(values)}
    results["perplexity_offline"] = {"word_perplexity,none": 12.5, "word_perplexity_stderr,none": "N/A",
                                     "byte_perplexity,none": 1.7, "bits_per_byte,none": 0.77}
    results["hellaswag"] = {"acc,none": 0.4, "acc_stderr,none": 0.01, "acc_norm,none": 0.5,
                            "acc_norm_stderr,none": 0.012, "alias": "hellaswag"}
    return {"results": results, "n-samples": n_samples, "groups": {}, "group_subtasks": {}}


@pytest.fixture
def scores() -> dict[str, list[int]]:
    rng = np.random.default_rng(0)
    subjects = ["abstract_algebra", "anatomy", "philosophy", "sociology", "marketing", "virology"]
    return {s: rng.integers(0, 2, size=int(rng.integers(5, 40))).tolist() for s in subjects}


def test_overall_is_over_questions_and_over_subjects(scores) -> None:
    metrics = summarize(lm_eval_like(scores))
    pooled = np.concatenate([np.array(v) for v in scores.values()])
    assert metrics["eval/mmlu_offline/acc"] == pytest.approx(pooled.mean())
    assert metrics["eval/mmlu_offline/acc_stderr"] == pytest.approx(pooled.std(ddof=1) / np.sqrt(len(pooled)))
    means = [np.mean(v) for v in scores.values()]
    assert metrics["eval/mmlu_offline/acc_subject_mean"] == pytest.approx(np.mean(means))
    subject_se = [np.std(v, ddof=1) / np.sqrt(len(v)) for v in scores.values()]
    assert metrics["eval/mmlu_offline/acc_subject_mean_stderr"] == pytest.approx(
        np.sqrt(np.sum(np.square(subject_se))) / len(scores))
    assert metrics["eval/mmlu_offline/n"] == len(pooled)


def test_categories_follow_lm_evals_grouping(scores) -> None:
    metrics = summarize(lm_eval_like(scores))
    for category in ("stem", "humanities", "social_sciences", "other"):
        members = [v for s, v in scores.items() if SUBJECT_CATEGORIES[s] == category]
        pooled = np.concatenate([np.array(v) for v in members])
        assert metrics[f"eval/mmlu_offline/{category}/acc"] == pytest.approx(pooled.mean())
        assert metrics[f"eval/mmlu_offline/{category}/acc_subject_mean"] == pytest.approx(
            np.mean([np.mean(v) for v in members]))
    assert metrics["eval/mmlu_offline/subject/anatomy/acc"] == pytest.approx(np.mean(scores["anatomy"]))


def test_other_tasks_and_the_perplexity_headline(scores) -> None:
    metrics = summarize(lm_eval_like(scores))
    assert metrics["eval/hellaswag/acc_norm"] == 0.5
    assert metrics["eval/hellaswag/acc_norm_stderr"] == 0.012
    assert metrics["eval/perplexity_offline/word_perplexity"] == 12.5
    assert "eval/perplexity_offline/word_perplexity_stderr" not in metrics  # "N/A" is not a number
    assert metrics["eval/perplexity"] == 12.5


def test_single_question_subjects_have_no_subject_mean_stderr() -> None:
    metrics = summarize(lm_eval_like({"anatomy": [1], "virology": [0]}))
    assert "eval/mmlu_offline/acc_subject_mean_stderr" not in metrics
    assert metrics["eval/mmlu_offline/acc"] == 0.5


def test_subject_task_names() -> None:
    assert subject_task("mmlu_offline_high_school_us_history") == ("mmlu_offline", "high_school_us_history")
    assert subject_task("mmlu_anatomy") == ("mmlu", "anatomy")
    assert subject_task("mmlu_offline_stem") is None  # a group, not a subject
    assert subject_task("hellaswag") is None
