"""GPU-hours of a sweep before it runs: ``qsweep.trainers.cost_model`` for training, plus evaluation.

Evaluation is costed from the measured 5-shot MMLU throughput of the 8B-shaped NF4 model on an
H100 (``bench/results/eval_throughput_h100_limit10.json``: 7.08 questions/s), scaled by
parameter count; other tasks are counted per document at that rate (their prompts are shorter:
an upper bound). Each trial also pays ``LOAD_SECONDS`` to start, load and quantize. Trials are
costed at their full ``max_steps`` (a pruner only makes a sweep cheaper). The untuned base
(``eval.baseline``) is evaluated once per cell, its seeds and trials sharing it
(``qsweep.orchestrator.trial.baseline``).
"""

from __future__ import annotations

from dataclasses import dataclass

from qsweep.evaluation.config import EvalConfig
from qsweep.orchestrator.sweep.planning import Plan
from qsweep.orchestrator.trial.config import TrialConfig
from qsweep.trainers.cost_model import GIB, ModelShape, shape_of, training_cost

MMLU_QUESTIONS_PER_S_8B = 7.08
"""Measured: 5-shot MMLU prompts, 8B-shaped NF4 model, one H100 (bench/README.md)."""
PARAMS_8B = 8.03e9
LOAD_SECONDS = 120.0
TASK_DOCUMENTS = {"mmlu": 14042, "mmlu_offline": 13752, "hellaswag": 10042, "winogrande": 1267,
                  "piqa": 1838, "arc_easy": 2376, "arc_challenge": 1172, "perplexity_offline": 1000}
"""Documents per task (mmlu_offline: the 14,042 questions less 5 few-shot examples per subject and
the 5 that repeat one of them)."""
SUBJECTS = {"mmlu": 57, "mmlu_offline": 57}


@dataclass(frozen=True)
class TrialEstimate:
    peak_bytes: float
    train_seconds: float
    eval_seconds: float
    baseline_seconds: float
    """The untuned base's evaluation: paid by one trial of each cell."""

    @property
    def seconds(self) -> float:
        """A trial's time without the base's evaluation."""
        return LOAD_SECONDS + self.train_seconds + self.eval_seconds


def eval_documents(evaluation: EvalConfig) -> int:
    """Documents one evaluation with this section scores."""
    documents = 0
    for task in evaluation.tasks:
        limit = evaluation.limit_for(task)
        full = TASK_DOCUMENTS.get(task, 1000)
        per = SUBJECTS.get(task)
        documents += min(full, limit * per) if (limit and per) else min(full, limit or full)
    return documents


def mmlu_questions(config: TrialConfig) -> int:
    """MMLU questions one evaluation of the trained model asks (0 without an MMLU task): with a
    per-subject limit, that many per subject it evaluates (those it trained on left out)."""
    from qsweep.trainers.mmlu import TRAIN_SUBJECTS

    trained_on = len(TRAIN_SUBJECTS) if config.data.name == "mmlu-heldout" else 0
    questions = 0
    for task in config.eval.tasks:
        if task in SUBJECTS:
            limit = config.eval.limit_for(task)
            subjects = SUBJECTS[task] - trained_on
            full = TASK_DOCUMENTS[task] * subjects // SUBJECTS[task]
            questions += min(full, limit * subjects) if limit else full
    return questions


def estimate_trial(config: TrialConfig, shape: ModelShape) -> TrialEstimate:
    cost = training_cost(config, shape)
    rate = MMLU_QUESTIONS_PER_S_8B * PARAMS_8B / shape.params
    evaluation = config.eval
    final = eval_documents(evaluation) if evaluation.tasks else 0
    baseline = eval_documents(evaluation.for_baseline()) if evaluation.tasks and evaluation.baseline else 0
    return TrialEstimate(cost.peak_bytes, cost.seconds, final / rate, baseline / rate)


@dataclass(frozen=True)
class SweepEstimate:
    trials: int
    gpu_hours: float
    peak_gib: float
    """The largest trial's estimated peak memory."""
    unknown: list[str]
    """Models whose shape is unknown (not estimated)."""
    fast_gpu_hours: float = 0.0
    """The same sweep trained with :func:`fast_layout`."""


FAST_TRAIN_OPTIONS = {"micro_batch_size": "auto", "packing": True, "compile": True}
"""The trainer's fastest measured layout for short examples (bench/README.md)."""


def fast_layout(config: TrialConfig) -> TrialConfig:
    """``config`` trained with packing, compiled layers and an automatic micro-batch: the same
    examples per optimizer step (``train.batch_size``), so the same training up to rounding."""
    train = config.train.model_copy(update={**FAST_TRAIN_OPTIONS, "batch_size": config.train.batch_size})
    return config.model_copy(update={"train": train})


def estimate_sweep(plan: Plan) -> SweepEstimate:
    """Every planned trial costed on one reference GPU (H100 80GB); searched params at the base."""
    seconds, fast_seconds, peak, unknown = 0.0, 0.0, 0.0, []
    per_cell = len(plan.spec.seeds) * plan.spec.trials_per_cell_seed
    for cell in plan.cells:
        config = plan.trial_config(cell, plan.spec.seeds[0])
        shape = shape_of(config.model.name)
        if shape is None:
            unknown.append(config.model.name)
            continue
        trial, fast = estimate_trial(config, shape), estimate_trial(fast_layout(config), shape)
        seconds += trial.seconds * per_cell + trial.baseline_seconds
        fast_seconds += fast.seconds * per_cell + fast.baseline_seconds
        peak = max(peak, trial.peak_bytes / GIB)
    return SweepEstimate(plan.total_trials, seconds / 3600, peak, sorted(set(unknown)), fast_seconds / 3600)
