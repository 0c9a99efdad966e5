"""The terminal display: ETAs from measured paces, however slow the steps."""

from __future__ import annotations

import pytest
from qsweep.orchestrator.cli import console
from qsweep.trainers.metrics import StepMetrics


def step(number: int) -> StepMetrics:
    return StepMetrics(step=number, loss=1.0, learning_rate=2e-4, grad_norm=0.1, tokens=100,
                       step_time_s=60.0, tokens_per_s=1.7, peak_memory_bytes=0, epoch=0.1)


def test_training_eta_comes_from_measured_steps_even_when_each_takes_minutes(monkeypatch) -> None:
    clock = iter([0.0, 120.0, 240.0])  # a step every 2 minutes: rich's own estimate would give none
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    progress = console.TrainProgress(10)
    shown = []
    monkeypatch.setattr(progress._progress, "update", lambda task, **fields: shown.append(fields["eta"]))
    for number in (1, 2, 3):
        progress(step(number))
    assert shown == ["-", "16:00", "14:00"]  # 8 then 7 steps left at 2 minutes each


def test_an_evaluation_row_counts_sequences_and_ends_at_zero(monkeypatch) -> None:
    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    progress = console.TrainProgress(4)
    shown = []
    monkeypatch.setattr(progress._progress, "update",
                        lambda task, **fields: shown.append((fields["completed"], fields["eta"])))
    for done in (0, 5, 20):
        progress.evaluation("eval base (step 0), choices", done, 20)
    assert shown == [(0, "-"), (5, "0:30"), (20, "0:00")]
    assert list(progress._tasks) == ["eval base (step 0), choices"]  # no training row before training


@pytest.mark.parametrize("name", ["eval/mmlu/subject/anatomy/acc", "eval/mmlu/acc_subject_mean",
                                  "eval/perplexity_offline/bits_per_byte", "eval/mmlu/acc_stderr"])
def test_detail_metrics_stay_in_mlflow(name: str) -> None:
    assert not console._headline(name)
    assert console._headline("eval/mmlu/acc") and console._headline("eval/perplexity")
