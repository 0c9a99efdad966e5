"""GPUs a sweep keeps busy: what each trial asks of the cluster, trials taking turns on a GPU
through a real file lock, and the sweep's GPU-use arithmetic."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock
from mlflow.tracking import MlflowClient

from orchestrator.cluster import Capacity
from orchestrator.launch import trial_resources
from orchestrator.spec import Resources
from orchestrator.tracking import MlflowTracker
from orchestrator.trial import run_trial
from orchestrator.usage import Usage

NODE = Capacity(gpus=4, cpus=64, cpus_per_gpu=16)


@pytest.mark.parametrize(("requested", "capacity", "asked"), [
    (Resources(), NODE, (0.5, 8, True)),                             # two trials take turns per GPU
    (Resources(overlap=False), NODE, (1, 16, False)),                # one trial per GPU, its cores
    (Resources(gpus=2), NODE, (2, 32, False)),                       # turns only for one-GPU trials
    (Resources(cpus=3), NODE, (0.5, 3, True)),                       # CPUs as configured
    (Resources(), Capacity(gpus=4, cpus=2, cpus_per_gpu=0.5), (0.5, 1, True)),  # at least one core
    (Resources(), Capacity(gpus=0, cpus=8), (0, 1, False)),          # no GPU: one core a trial
])
def test_what_each_trial_asks_of_the_cluster(requested, capacity, asked) -> None:
    resources = trial_resources(requested, capacity)
    assert (resources.gpus, resources.cpus, resources.overlap) == asked
    assert resources.compute_gpus == (1 if resources.overlap else resources.gpus)


def test_cpus_must_be_positive_or_auto() -> None:
    from pydantic import ValidationError

    assert Resources(cpus=2).cpus == 2 and Resources().cpus == "auto"
    with pytest.raises(ValidationError, match="must be > 0 or auto"):
        Resources(cpus=0)
    with pytest.raises(ValidationError):
        Resources(cpus="all")


def test_gpu_use_compares_compute_with_the_gpu_time_the_sweep_held() -> None:
    usage = Usage(compute_gpus=1, capacity=2)  # 4 trials taking turns on 2 GPUs
    for compute in (40.0, 50.0, 60.0, 50.0):
        usage.add({"start": 5.0, "load": 10.0, "wait": 30.0, "baseline_eval": 5.0, "train": compute - 10,
                   "eval": 5.0, "record": 1.0})
    usage.add({})  # a trial whose worker died reports nothing
    summary = usage.summary(makespan_s=120.0)
    assert summary.trials == 5 and summary.compute_s == 200.0
    assert summary.held_s == 240.0 and summary.busy_share == pytest.approx(200 / 240)
    assert summary.ideal_s == 100.0 and summary.makespan_ratio == pytest.approx(1.2)
    assert summary.phase_medians["train"] == 40.0 and summary.phase_medians["wait"] == 30.0
    assert Usage(compute_gpus=0, capacity=3).summary(1.0).unit == "slot"


def test_a_trial_prepares_while_the_gpu_is_leased_and_computes_after(tiny_config, tmp_path: Path) -> None:
    """The lease is held elsewhere (another trial's turn): this trial imports, checks and
    tokenizes meanwhile, then waits; it loads its weights and trains only once it gets the lease."""
    lease = FileLock(str(tmp_path / "gpu.lock"))
    other = FileLock(str(tmp_path / "gpu.lock"))  # the other trial's handle on the same lock
    cfg = tiny_config(train={"max_steps": 3}, eval={"tasks": []})
    tracker = MlflowTracker.start(f"sqlite:///{tmp_path / 'mlflow.db'}", "turns", "waits")
    workdir = tmp_path / "trial"
    results = []
    other.acquire()
    worker = threading.Thread(
        target=lambda: results.append(run_trial(cfg, tracker, workdir, gpu_lease=lease)))
    worker.start()
    deadline = time.monotonic() + 120
    while not (workdir / "environment.json").exists():  # written once the data is ready
        assert time.monotonic() < deadline and worker.is_alive()
        time.sleep(0.05)
    held = 2.0
    time.sleep(held)
    client = MlflowClient(tracker.client.tracking_uri)
    assert not client.get_metric_history(tracker.run_id, "train/loss")  # no step while it waits
    assert "model/base_weight_bytes" not in client.get_run(tracker.run_id).data.metrics  # no weights
    other.release()
    worker.join(timeout=300)
    (result,) = results
    assert result.status == "finished" and result.train.steps == 3
    phases = result.phases
    # It waited about as long as the lease was held elsewhere (it began waiting just after the
    # file we watched for was written, and recording it takes a moment).
    assert phases["wait"] >= held - 0.5 and phases["train"] > 0
    assert phases["load/data"] + phases["load/tokenizer"] > 0 and phases["load/weights"] > 0
    assert not lease.is_locked  # given back once the trial was done with the GPU
