"""What a trial's MLflow run holds for a researcher reading it in the UI: params that apply
(``n/a`` where they do not), the training data as a dataset input, and system metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from qsweep.orchestrator.adapters.tracking import MlflowTracker
from qsweep.orchestrator.trial.runner import run_trial

EXPERIMENT = "mlflow-records"


def test_a_16bit_run_has_no_4bit_params_and_records_its_data_and_system(
        mlflow_server: str, tiny_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    cfg = tiny_config(quant={"bits": 16}, train={"max_steps": 12, "grad_accum_steps": 1}, eval={"tasks": []},
                      tracking={"uri": mlflow_server, "experiment": EXPERIMENT})
    tracker = MlflowTracker.start(mlflow_server, EXPERIMENT, "bf16")
    result = run_trial(cfg, tracker, tmp_path / "bf16")
    assert result.status == "finished"
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.data.params["quant.type"] == "n/a" and run.data.params["quant.double_quant"] == "n/a"
    assert run.data.params["quant.bits"] == "16" and run.data.params["lora.r"] == str(cfg.lora.r)

    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == Path(cfg.data.path).name and data.dataset.source_type == "http"
    assert str(cfg.data.path) in data.dataset.source
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "training"

    system = {k for k in run.data.metrics if k.startswith("system/")}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system

    # run again in the same run (a retry): nothing logged twice
    run_trial(cfg, MlflowTracker.attach(mlflow_server, tracker.run_id), tmp_path / "bf16")
    assert len(client.get_run(tracker.run_id).inputs.dataset_inputs) == 1
    for name in client.get_run(tracker.run_id).data.metrics:  # every metric: no (metric, step) twice
        steps = [m.step for m in client.get_metric_history(tracker.run_id, name)]
        assert len(steps) == len(set(steps)), (name, steps)
    assert len(client.get_metric_history(tracker.run_id, "model/base_weight_bytes")) == 1


def test_a_4bit_run_logs_its_4bit_params(mlflow_server: str, tiny_config) -> None:
    from qsweep.orchestrator.trial.runner import run_params

    cfg = tiny_config(quant={"type": "fp4", "double_quant": False})
    assert run_params(cfg)["quant.type"] == "fp4" and run_params(cfg)["quant.double_quant"] is False
    sixteen = run_params(tiny_config(quant={"bits": 16}))
    assert sixteen["quant.type"] == sixteen["quant.double_quant"] == "n/a"
