"""GPUs a sweep keeps busy: what each trial asks of the cluster, trials taking turns on a GPU
through real file locks (loading ahead when memory allows), and the sweep's GPU-use arithmetic.

The GPU's memory readings are injected (these tests run on a CPU); the locks, the processes and
the trials are real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from qsweep.orchestrator.adapters.cluster import Capacity
from qsweep.orchestrator.adapters.tracking import MlflowTracker
from qsweep.orchestrator.sweep.launch import trial_resources
from qsweep.orchestrator.sweep.spec import Resources
from qsweep.orchestrator.sweep.usage import Usage
from qsweep.orchestrator.trial.gpu_turns import GIB, GpuTurns, MemoryNeeds
from qsweep.orchestrator.trial.runner import run_trial

NODE = Capacity(gpus=4, cpus=64, cpus_per_gpu=16)


@pytest.mark.parametrize(("requested", "capacity", "asked"), [
    (Resources(), NODE, (0.5, 8, True, True)),                       # two trials take turns per GPU
    (Resources(load_ahead=False), NODE, (0.5, 8, True, False)),      # ... each loading in its turn
    (Resources(overlap=False), NODE, (1, 16, False, False)),         # one trial per GPU, its cores
    (Resources(gpus=2), NODE, (2, 32, False, False)),                # turns only for one-GPU trials
    (Resources(cpus=3), NODE, (0.5, 3, True, True)),                 # CPUs as configured
    (Resources(), Capacity(gpus=4, cpus=2, cpus_per_gpu=0.5), (0.5, 1, True, True)),  # one core at least
    (Resources(), Capacity(gpus=0, cpus=8), (0, 1, False, False)),   # no GPU: one core a trial
])
def test_what_each_trial_asks_of_the_cluster(requested, capacity, asked) -> None:
    resources = trial_resources(requested, capacity)
    assert (resources.gpus, resources.cpus, resources.overlap, resources.load_ahead) == asked
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


def turns_of(directory: Path, *, free: float = 0.0, reserved: float = 0.0,
             load_ahead: bool = True) -> GpuTurns:
    """One trial's handle on the turns of a GPU of 100 GiB, with ``free`` bytes free on it and
    ``reserved`` held by the trial itself."""
    return GpuTurns("0", directory, load_ahead=load_ahead, free_bytes=lambda: free,
                    total_bytes=lambda: 100 * GIB, reserved_bytes=lambda: reserved,
                    release_cached=lambda: None, poll_s=0.05)


def waits_to_load(turns: GpuTurns, needs: MemoryNeeds | None) -> threading.Event:
    """``turns.wait_to_load(needs)`` in a thread; the event is set once it returns."""
    returned = threading.Event()
    start(lambda: (turns.wait_to_load(needs), returned.set()))
    return returned


def start(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def eventually(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


HOLDER = MemoryNeeds(resident_bytes=5 * GIB, peak_bytes=10 * GIB)


def training_holder(directory: Path) -> GpuTurns:
    """A trial that has the turn and has trained its first step with 4 GiB reserved: it may
    claim 6 GiB more (its estimated peak of 10 GiB less what it holds)."""
    holder = turns_of(directory, reserved=4 * GIB)
    holder.wait_to_load(HOLDER)
    assert holder.has_turn and not holder.loaded_ahead
    holder.training()
    return holder


@pytest.mark.parametrize(("free_gib", "loads_ahead"), [(14.0, True), (13.9, False)])
def test_the_waiting_trial_loads_ahead_only_if_its_model_fits_beside_the_holders_peak(
        tmp_path: Path, free_gib: float, loads_ahead: bool) -> None:
    """Room = free memory - the holder's growth (6 GiB) - a margin (5% of 100 GiB) >= the
    waiting model's 3 GiB: 14 GiB free is just enough, 13.9 GiB is not."""
    holder = training_holder(tmp_path)
    waiter = turns_of(tmp_path, free=free_gib * GIB)
    returned = waits_to_load(waiter, MemoryNeeds(resident_bytes=3 * GIB, peak_bytes=8 * GIB))
    if loads_ahead:
        assert returned.wait(30) and waiter.loaded_ahead and not waiter.has_turn
        waiting = start(waiter.take_turn)  # loaded: now it waits for the turn
        assert not waiting.join(0.5) and waiting.is_alive()
        holder.release()
        waiting.join(30)
    else:
        assert not returned.wait(1.0)  # it waits for the turn, not loading
        holder.release()
        assert returned.wait(30) and not waiter.loaded_ahead
    assert waiter.has_turn and waiter.allocates
    waiter.release()


@pytest.mark.parametrize(("load_ahead", "needs"), [(False, HOLDER), (True, None)],
                         ids=["load-ahead-off", "unknown-shape"])
def test_without_load_ahead_or_a_known_shape_the_model_loads_in_its_turn(
        tmp_path: Path, load_ahead: bool, needs: MemoryNeeds | None) -> None:
    holder = training_holder(tmp_path)
    waiter = turns_of(tmp_path, free=90 * GIB, load_ahead=load_ahead)
    returned = waits_to_load(waiter, needs)
    assert not returned.wait(1.0)
    holder.release()
    assert returned.wait(30) and waiter.has_turn and not waiter.loaded_ahead
    waiter.release()


def test_the_holder_evaluates_only_after_a_load_in_progress_and_nobody_loads_while_it_evaluates(
        tmp_path: Path) -> None:
    """An evaluation sizes its batches to the free memory: no model may be loading meanwhile."""
    holder = training_holder(tmp_path)
    waiter = turns_of(tmp_path, free=90 * GIB)
    waiter.wait_to_load(HOLDER)  # loads ahead: it holds the allocation lock while loading
    assert waiter.loaded_ahead
    evaluating = threading.Event()

    def evaluate() -> None:
        with holder.allocating():
            evaluating.set()
            time.sleep(1.0)

    evaluation = start(evaluate)
    assert not evaluating.wait(1.0)  # the load is still in progress
    waiting_for_turn = start(waiter.take_turn)  # loaded: gives the allocation lock up
    assert evaluating.wait(30)
    other = turns_of(tmp_path, free=90 * GIB)  # a third trial must not load during the evaluation
    third = waits_to_load(other, HOLDER)
    assert not third.wait(0.5)
    evaluation.join(30)
    assert third.wait(30) and other.loaded_ahead  # training again: room beside it
    other.release()
    assert waiting_for_turn.is_alive() and not waiter.has_turn  # the holder still has the turn
    holder.release()
    waiting_for_turn.join(30)
    assert waiter.has_turn
    waiter.release()


HOLDER_SCRIPT = """
import sys, time
from pathlib import Path
from qsweep.orchestrator.trial.gpu_turns import GIB, GpuTurns, MemoryNeeds
turns = GpuTurns("0", Path(sys.argv[1]), free_bytes=lambda: 0, total_bytes=lambda: 100 * GIB,
                 reserved_bytes=lambda: GIB, release_cached=lambda: None)
turns.wait_to_load(MemoryNeeds(2 * GIB, 4 * GIB))
turns.training()
print("training", flush=True)
time.sleep(600)
"""


def test_a_holder_killed_mid_training_gives_the_gpu_up(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).parents[2])
    try:
        assert holder.stdout.readline().strip() == "training"
        assert (tmp_path / "qsweep-gpu-0.json").exists()  # its note: it may claim 3 GiB more
        waiter = turns_of(tmp_path, free=2 * GIB)  # no room to load ahead
        returned = waits_to_load(waiter, HOLDER)
        assert not returned.wait(1.0)
        os.kill(holder.pid, signal.SIGKILL)
        assert returned.wait(30) and waiter.has_turn
        assert not (tmp_path / "qsweep-gpu-0.json").exists()  # the dead holder's note is gone
        waiter.release()
    finally:
        holder.kill()
        holder.wait()


def run_in_thread(cfg, tracker, workdir: Path, turns: GpuTurns) -> tuple[threading.Thread, list]:
    results: list = []
    thread = start(lambda: results.append(run_trial(cfg, tracker, workdir, gpu_turns=turns)))
    return thread, results


@pytest.mark.parametrize("room", [False, True], ids=["loads-in-its-turn", "loads-ahead"])
def test_a_trial_prepares_while_another_has_the_gpu_and_computes_in_its_turn(
        tiny_config, tmp_path: Path, room: bool) -> None:
    """Another trial has the GPU's turn and trains: this one imports, checks and tokenizes
    meanwhile, loads its weights ahead if there is room (else in its turn), and evaluates and
    trains only in its turn."""
    locks = tmp_path / "locks"
    locks.mkdir()
    holder = training_holder(locks)
    cfg = tiny_config(train={"max_steps": 3}, eval={"tasks": []})
    tracker = MlflowTracker.start(f"sqlite:///{tmp_path / 'mlflow.db'}", "turns", "waits")
    workdir = tmp_path / "trial"
    client = MlflowClient(tracker.client.tracking_uri)
    turns = turns_of(locks, free=(90 if room else 1) * GIB)
    worker, results = run_in_thread(cfg, tracker, workdir, turns)
    eventually(lambda: (workdir / "environment.json").exists() or not worker.is_alive())  # data ready
    if room:  # its model's footprint is recorded once loaded
        eventually(lambda: "model/base_weight_bytes" in client.get_run(tracker.run_id).data.metrics)
    held = 2.0
    time.sleep(held)
    assert not client.get_metric_history(tracker.run_id, "train/loss")  # no step while it waits
    loaded = "model/base_weight_bytes" in client.get_run(tracker.run_id).data.metrics
    assert loaded == room and turns.loaded_ahead == room
    holder.release()
    worker.join(timeout=300)
    (result,) = results
    assert result.status == "finished" and result.train.steps == 3
    phases = result.phases
    # It waited about as long as the turn was held elsewhere, less its loading ahead.
    assert phases["wait"] >= held - 0.5 and phases["train"] > 0
    assert phases["load/data"] + phases["load/tokenizer"] > 0 and phases["load/weights"] > 0
    assert not turns.has_turn and not turns.allocates  # given back once the trial was done
    assert not (locks / "qsweep-gpu-0.json").exists()
