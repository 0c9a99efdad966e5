"""The ``eval`` section of a trial config: which lm-eval tasks measure a trained trial, and how."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator
from qsweep.evaluation.mmlu_categories import CATEGORIES, SUBJECT_CATEGORIES
from qsweep.trainers.config import ConfigProblems, ConfigSection

OFFLINE_TASKS = ("mmlu_offline", "perplexity_offline")
"""Tasks shipped with qsweep (evaluation/tasks/), evaluated without the hub."""

MMLU_FAMILY = ("mmlu", "mmlu_offline")
"""Tasks whose subjects are grouped into STEM / humanities / social sciences / other."""

_SUBJECT_TASK = re.compile(r"^(?P<family>" + "|".join(sorted(MMLU_FAMILY, key=len, reverse=True))
                           + r")_(?P<subject>[a-z_]+)$")


def subject_task(name: str) -> tuple[str, str] | None:
    """``("mmlu_offline", "anatomy")`` for ``mmlu_offline_anatomy``; None for other tasks."""
    match = _SUBJECT_TASK.match(name)
    if match and match["subject"] in SUBJECT_CATEGORIES:
        return match["family"], match["subject"]
    return None

def is_offline(task: str) -> bool:
    """Whether ``task`` is shipped with qsweep: an offline task, an offline MMLU subject
    (``mmlu_offline_anatomy``) or an offline MMLU category group (``mmlu_offline_stem``)."""
    if task in OFFLINE_TASKS:
        return True
    offline_subject = (found := subject_task(task)) is not None and found[0] == "mmlu_offline"
    return offline_subject or task in {f"mmlu_offline_{category}" for category in CATEGORIES}


OFFLINE_DEV_PER_SUBJECT = 5
"""Questions per subject that mmlu_offline reserves as few-shot examples (as MMLU's dev split)."""


class EvalConfig(ConfigSection):
    """Evaluation of the trained model (and, on request, of its untuned base) with lm-eval."""

    tasks: list[str] = ["mmlu"]
    """lm-eval task or group names: mmlu, hellaswag, winogrande, piqa, arc_easy, arc_challenge
    (hub), mmlu_offline, perplexity_offline (offline). An empty list skips evaluation."""
    num_fewshot: int | None = Field(None, ge=0)
    """Few-shot examples per prompt; null: 5 for MMLU (as the paper), else the task's default."""
    limit: int | None = Field(None, gt=0)
    """Evaluate at most this many documents per task, a seeded random sample; for MMLU per
    subject, so subjects stay balanced (stratified)."""
    task_limits: dict[str, int] = {}
    """Per-task limits that replace ``limit`` for the tasks named (an MMLU group's applies to
    each of its subjects), e.g. ``{perplexity_offline: 200}``."""
    seed: int = Field(1234, ge=0)
    """Seed of the document sample and of lm-eval's few-shot sampling."""
    batch_size: int | Literal["auto"] = "auto"
    """Sequences per forward pass; auto: on a GPU, as many as the free memory holds at the
    length of the longest request (measured once per trial, never at the model's advertised
    context), 4 on a CPU."""
    save_samples: bool = False
    """Keep every document's prompt, answers and score (samples.jsonl per task)."""
    baseline: bool = False
    """Also evaluate the untuned base model (logged as step 0), as in the paper's Table 2."""
    baseline_tasks: list[str] | None = None
    """Tasks of that step-0 evaluation; null: the same as ``tasks``. The paper's Table 2 needs
    only ``[perplexity_offline]`` (or another perplexity task), which ``tasks`` need not list:
    a sweep can measure perplexity before the fine-tune and MMLU after it."""

    @field_validator("tasks")
    @classmethod
    def _check_tasks(cls, tasks: list[str]) -> list[str]:
        if any(not t.strip() for t in tasks):
            raise ValueError("task names must not be empty")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"lists a task twice: {tasks}")
        return tasks

    @field_validator("task_limits")
    @classmethod
    def _check_task_limits(cls, limits: dict[str, int]) -> dict[str, int]:
        bad = {task: n for task, n in limits.items() if n <= 0}
        if bad:
            raise ValueError(f"limits must be > 0, got {bad}")
        return limits

    @model_validator(mode="after")
    def _check_baseline_tasks(self) -> EvalConfig:
        if self.baseline_tasks is not None:
            if not self.baseline_tasks or any(not t.strip() for t in self.baseline_tasks):
                raise ConfigProblems([("baseline_tasks", f"must name some tasks, got {self.baseline_tasks}")])
            if len(set(self.baseline_tasks)) != len(self.baseline_tasks):
                raise ConfigProblems([("baseline_tasks", f"lists a task twice: {self.baseline_tasks}")])
        return self

    @model_validator(mode="after")
    def _check_limited_tasks(self) -> EvalConfig:
        unknown = sorted(set(self.task_limits) - set(self.all_tasks))
        if unknown:
            raise ConfigProblems([("task_limits", f"{', '.join(unknown)} not in eval.tasks {self.tasks}"
                                                  + (f" or eval.baseline_tasks {self.baseline_tasks}"
                                                     if self.baseline_tasks else ""))])
        return self

    @property
    def all_tasks(self) -> list[str]:
        """Every task some evaluation runs: ``tasks``, then the ``baseline_tasks`` they lack."""
        return self.tasks + [t for t in self.baseline_tasks or [] if t not in self.tasks]

    def for_baseline(self) -> EvalConfig:
        """This section as the step-0 evaluation runs it (``baseline_tasks`` only)."""
        if self.baseline_tasks is None:
            return self
        tasks = self.baseline_tasks
        limits = {task: n for task, n in self.task_limits.items() if task in tasks}
        return self.model_copy(update={"tasks": tasks, "task_limits": limits})

    def limit_for(self, task: str) -> int | None:
        """The limit of a leaf task: its own, its MMLU family's, else ``limit``."""
        subject = subject_task(task)
        family = subject[0] if subject else task
        return self.task_limits.get(task, self.task_limits.get(family, self.limit))

    @field_validator("batch_size")
    @classmethod
    def _check_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value <= 0:
            raise ValueError(f"must be > 0 or auto, got {value}")
        return value

    @model_validator(mode="after")
    def _check_fewshot(self) -> EvalConfig:
        if "mmlu_offline" in self.all_tasks and (self.num_fewshot or 0) > OFFLINE_DEV_PER_SUBJECT:
            raise ConfigProblems([("num_fewshot", f"mmlu_offline keeps {OFFLINE_DEV_PER_SUBJECT} "
                                                  f"few-shot questions per subject, got {self.num_fewshot}")])
        return self

    def fewshot_for(self, task: str) -> int | None:
        """Few-shot count for ``task``: the configured one, 5 for MMLU, else the task default."""
        if self.num_fewshot is not None:
            return self.num_fewshot
        return 5 if task in MMLU_FAMILY else None

    @property
    def needs_hub(self) -> list[str]:
        """The configured tasks that download their data from the hub."""
        return [t for t in self.all_tasks if not is_offline(t)]
