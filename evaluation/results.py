"""lm-eval results to flat metric names that sort well in MLflow.

For MMLU-family tasks (``mmlu``, ``mmlu_offline``) the per-subject results are aggregated
here, both ways, for the whole benchmark and for each category (STEM, humanities, social
sciences, other)::

    eval/mmlu_offline/acc                      over questions (each question weighs the same;
    eval/mmlu_offline/acc_stderr               lm-eval's group number, "weight_by_size")
    eval/mmlu_offline/acc_subject_mean         over subjects (each subject weighs the same)
    eval/mmlu_offline/acc_subject_mean_stderr
    eval/mmlu_offline/stem/acc ...             the same four per category
    eval/mmlu_offline/subject/anatomy/acc      each subject
    eval/mmlu_offline/n                        questions evaluated

Other tasks give ``eval/<task>/<metric>`` (and ``_stderr`` where lm-eval computed one), e.g.
``eval/hellaswag/acc_norm`` or ``eval/perplexity_offline/word_perplexity``; ``eval/perplexity``
repeats the word perplexity of the first perplexity task.

Standard errors: a subject's is the sample standard error of its 0/1 scores,
sqrt(p(1-p)/(n-1)) (lm-eval's); over questions, the same on the pooled questions; over
subjects, sqrt(sum of subject variances) / number of subjects (left out when a subject has a
single question).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from qsweep.evaluation.config import subject_task
from qsweep.evaluation.mmlu_categories import CATEGORIES, SUBJECT_CATEGORIES

_PERPLEXITY = "word_perplexity"


@dataclass(frozen=True)
class SubjectScore:
    family: str
    subject: str
    accuracy: float
    n: int

    @property
    def variance(self) -> float | None:
        """Squared standard error of the subject's accuracy (None: one question says nothing)."""
        if self.n < 2:
            return None
        return self.accuracy * (1 - self.accuracy) / (self.n - 1)


def _aggregate(prefix: str, scores: list[SubjectScore]) -> dict[str, float]:
    total = sum(s.n for s in scores)
    correct = sum(s.accuracy * s.n for s in scores)
    pooled = correct / total
    subject_mean = sum(s.accuracy for s in scores) / len(scores)
    metrics = {f"{prefix}/acc": pooled, f"{prefix}/acc_subject_mean": subject_mean,
               f"{prefix}/n": float(total)}
    if total > 1:
        metrics[f"{prefix}/acc_stderr"] = math.sqrt(pooled * (1 - pooled) / (total - 1))
    variances = [s.variance for s in scores]
    if all(v is not None for v in variances):
        metrics[f"{prefix}/acc_subject_mean_stderr"] = math.sqrt(sum(variances)) / len(scores)
    return metrics


def mmlu_metrics(scores: list[SubjectScore]) -> dict[str, float]:
    """Overall, per-category and per-subject metrics of one MMLU family's subject scores."""
    metrics: dict[str, float] = {}
    families = sorted({s.family for s in scores})
    for family in families:
        mine = [s for s in scores if s.family == family]
        metrics.update(_aggregate(f"eval/{family}", mine))
        for category in CATEGORIES:
            members = [s for s in mine if SUBJECT_CATEGORIES[s.subject] == category]
            if members:
                metrics.update(_aggregate(f"eval/{family}/{category}", members))
        for score in mine:
            metrics[f"eval/{family}/subject/{score.subject}/acc"] = score.accuracy
    return metrics


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarize(results: dict[str, Any]) -> dict[str, float]:
    """Flat ``eval/...`` metrics from the dict that ``lm_eval.evaluator.evaluate`` returns."""
    groups = set(results.get("groups", {})) | set(results.get("group_subtasks", {}))
    n_samples = results.get("n-samples", {})
    scores: list[SubjectScore] = []
    metrics: dict[str, float] = {}
    for task, values in results["results"].items():
        if task in groups:
            continue
        found = subject_task(task)
        if found is not None:
            n = int(n_samples.get(task, {}).get("effective", values.get("sample_len", 0)))
            scores.append(SubjectScore(found[0], found[1], float(values["acc,none"]), n))
            continue
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            number = _number(value)
            if not filt or number is None or metric.endswith("_stderr"):
                continue
            name = metric if filt == "none" else f"{metric}_{filt}"
            metrics[f"eval/{task}/{name}"] = number
            stderr = _number(values.get(f"{metric}_stderr,{filt}"))
            if stderr is not None:
                metrics[f"eval/{task}/{name}_stderr"] = stderr
            if metric == _PERPLEXITY and "eval/perplexity" not in metrics:
                metrics["eval/perplexity"] = number
    if scores:
        metrics.update(mmlu_metrics(scores))
    return dict(sorted(metrics.items()))
