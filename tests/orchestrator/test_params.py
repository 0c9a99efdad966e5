"""Structured parameters go to MLflow as JSON and come back as they were; runs recorded before
(Python's repr) still read."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from qsweep.orchestrator.adapters.tracking import MlflowTracker
from qsweep.orchestrator.report.reporting import _structured


def test_structured_params_are_json_and_scalars_plain_text(tmp_path: Path) -> None:
    run = MlflowTracker.start(f"sqlite:///{tmp_path / 'mlflow.db'}", "params", "json")
    grid = {"data_type": ["NF4", "FP4"], "model": ["7B"]}
    run.log_params({"sweep.grid": grid, "lora.target_modules": ["q_proj", "v_proj"], "sweep.search": None,
                    "lora.r": 8, "quant.double_quant": True})
    params = MlflowClient(run.client.tracking_uri).get_run(run.run_id).data.params
    assert json.loads(params["sweep.grid"]) == grid
    assert json.loads(params["lora.target_modules"]) == ["q_proj", "v_proj"]
    assert (params["sweep.search"], params["lora.r"], params["quant.double_quant"]) == ("null", "8", "True")
    assert _structured(params["sweep.grid"]) == grid


def test_a_grid_recorded_as_a_python_repr_still_reads() -> None:
    assert _structured("{'data_type': ['NF4', 'FP4']}") == {"data_type": ["NF4", "FP4"]}
    assert _structured("not a value") == {}
