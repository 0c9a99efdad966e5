"""``qsweep trial`` into the local store, and ``qsweep ui`` serving it on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

QSWEEP = str(Path(sys.executable).parent / "qsweep")


@pytest.fixture(scope="module")
def local_trial(tiny_trial, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("cli-trial")
    config = home / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_trial(
        train={"max_steps": 4, "grad_accum_steps": 1},
        eval={"tasks": ["perplexity_offline"], "limit": 3, "baseline": True})))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([QSWEEP, "trial", str(config), "--root", "runs"], cwd=home, capture_output=True,
                          text=True, env={**env, "COLUMNS": "200"}, check=False)
    return home, done


def test_trial_prints_the_evaluation_and_the_run(local_trial) -> None:
    home, done = local_trial
    assert done.returncode == 0, done.stderr
    assert "perplexity_offline/word_perplexity" in done.stdout
    assert "base (step 0)" in done.stdout
    run_id = done.stdout.split("MLflow run id: ")[1].split()[0]
    client = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["qsweep.status"] == "finished"
    assert f"#/experiments/{run.info.experiment_id}/runs/{run_id}" in done.stdout
    assert (home / "runs" / "mlartifacts").is_dir()
    assert {a.path for a in client.list_artifacts(run_id)} >= {"adapter", "config.yaml", "eval"}


def test_ui_serves_the_local_store_on_loopback_only(local_trial, launch_server) -> None:
    home, done = local_trial
    run_id = done.stdout.split("MLflow run id: ")[1].split()[0]
    _, port = launch_server(lambda port: [QSWEEP, "ui", "--root", "runs", "--port", str(port)], "/health",
                            cwd=home)
    base = f"http://127.0.0.1:{port}"
    listening = {c.laddr.ip for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    assert listening == {"127.0.0.1"}
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/runs/get?run_id={run_id}") as answer:
        run = json.load(answer)["run"]
    assert run["info"]["status"] == "FINISHED"
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/artifacts/list?run_id={run_id}") as answer:
        files = {f["path"] for f in json.load(answer)["files"]}
    assert "adapter" in files


def test_ui_without_a_store_says_so(tmp_path: Path) -> None:
    done = subprocess.run([QSWEEP, "ui", "--root", str(tmp_path)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 1 and "no local MLflow store" in done.stderr


def test_trial_output_has_a_progress_per_phase_and_no_library_noise(local_trial) -> None:
    """lm-eval's, datasets', MLflow's bars and banners stay out; each phase reports its progress."""
    home, done = local_trial
    output = done.stdout + done.stderr
    for noise in ("it/s]", "Running loglikelihood", "Building contexts", "mlflow.store", "View run",
                  "Creating initial MLflow", "system_metrics_monitor", "Map:"):
        assert noise not in output, noise
    assert "eval base (step 0), perplexity: 3/3 sequences" in done.stdout
    assert "eval trained, perplexity: 3/3 sequences" in done.stdout
    assert "step 4/4 loss" in done.stdout
    assert len(output.splitlines()) <= 50, output  # a screen
