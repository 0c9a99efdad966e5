"""A training run's summary metrics: what the sweep's objectives and MLflow read."""

from __future__ import annotations

import math

import pytest
from qsweep.trainers.footprint import WeightFootprint
from qsweep.trainers.metrics import TrainResult
from qsweep.trainers.status import TrialStatus


def result(final_loss: float | None) -> TrainResult:
    return TrainResult(TrialStatus.FINISHED, "trained 3 steps", steps=3, final_loss=final_loss,
                       tokens_per_s=120.0, peak_memory_bytes=2048, memory_kind="cpu_peak_rss",
                       footprint=WeightFootprint(total_bytes=1000, quantized_params=800, quantized_bytes=450),
                       trainable_params=64, adapter_dir=None)


@pytest.mark.parametrize("loss", [0.0, 1.25])
def test_the_final_loss_is_reported_as_it_is_even_when_zero(loss: float) -> None:
    assert result(loss).summary_metrics()["train/final_loss"] == loss


def test_a_run_without_a_loss_reports_nan_and_the_rest_of_its_summary() -> None:
    summary = result(None).summary_metrics()
    assert math.isnan(summary["train/final_loss"])
    assert summary["train/mean_tokens_per_s"] == 120.0 and summary["train/peak_memory_bytes"] == 2048.0
    assert summary["model/quantized_bytes"] == 450.0 and summary["model/trainable_params"] == 64.0


def test_trial_statuses_know_their_optuna_state_and_mlflow_status() -> None:
    expected = {"running": ("RUNNING", "RUNNING"), "finished": ("COMPLETE", "FINISHED"),
                "pruned": ("PRUNED", "KILLED"), "interrupted": ("FAIL", "KILLED"), "nan": ("FAIL", "FAILED"),
                "failed": ("FAIL", "FAILED"), "crashed": ("FAIL", "FAILED"), "oom": ("FAIL", "FAILED")}
    assert {status.value for status in TrialStatus} == set(expected)
    for status in TrialStatus:
        assert (status.optuna_state, status.mlflow_status) == expected[status]
        assert status == status.value and f"{status}" == status.value  # tags and JSON hold the plain word
    failures = [TrialStatus.OOM, TrialStatus.FAILED, TrialStatus.CRASHED]
    assert [status for status in TrialStatus if status.is_failure] == failures
    assert TrialStatus.of_optuna_state("COMPLETE") is TrialStatus.FINISHED
    assert TrialStatus.of_optuna_state("FAIL") is TrialStatus.FAILED

