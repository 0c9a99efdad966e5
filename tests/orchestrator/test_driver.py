"""The sweep driver against an in-process cluster: recovery, out-of-memory retries, crashes and
interruption in seconds.

Everything but Ray is real — the sweep spec and plan, Optuna's SQLite storage, an MLflow SQLite
store — and the cluster runs each trial's scripted ending (``behave``) when the driver waits for
it. The end-to-end tests on Ray, with real faults, are in ``test_sweep.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from qsweep.orchestrator.adapters.cluster import TrialCrashed, TrialResources
from qsweep.orchestrator.adapters.search import StudyStore, sqlite_url
from qsweep.orchestrator.adapters.tracking import MlflowTracker
from qsweep.orchestrator.sweep.driver import SweepDriver, smaller_micro_batch
from qsweep.orchestrator.sweep.ledger import RunLedger
from qsweep.orchestrator.sweep.planning import load_plan
from qsweep.orchestrator.sweep.sweep_dir import SweepDir
from qsweep.orchestrator.trial.worker import TrialOutcome, TrialRequest
from qsweep.trainers.checkpoint import STATE_FILE, discard_other_configs

Behave = Callable[[TrialRequest, int], Any]
"""How a trial ends, given its request and its attempt (1, 2, ...): a TrialOutcome, or an
exception that the cluster raises when the driver asks for the result."""


class DriverKilled(BaseException):
    """The driver's process vanishing (SIGKILL): nothing after it runs."""


class FakeCluster:
    """The driver's view of a Ray cluster, in process: a trial ends when the driver waits for it."""

    def __init__(self, behave: Behave, *, fail_wait: BaseException | None = None):
        self.behave = behave
        self.fail_wait = fail_wait
        """Raised by the driver's first wait with two trials running (Ctrl-C, say); until then
        no trial ends."""
        self.running_at_failure: set[str] = set()
        self.requests: list[TrialRequest] = []
        self.cancelled: list[int] = []
        self.attempts: Counter[str] = Counter()
        self._queued: dict[int, TrialRequest] = {}
        self._ended: dict[int, Any] = {}

    def submit(self, fn: Any, request: TrialRequest, *, gpus: float, cpus: float, retries: int,
               pruning: bool) -> int:
        ref = len(self.requests)
        self.requests.append(request)
        self._queued[ref] = request
        return ref

    def wait(self, refs: list[int], timeout: float) -> list[int]:
        if self.fail_wait is not None:
            if len(refs) < 2:
                return []
            self.running_at_failure = {self._queued[ref].key for ref in refs}
            raise self.fail_wait
        ready = []
        for ref in refs:
            request = self._queued.pop(ref, None)
            if request is not None:
                self.attempts[request.key] += 1
                self._ended[ref] = self.behave(request, self.attempts[request.key])
                ready.append(ref)
        return ready

    def result(self, ref: int) -> Any:
        ended = self._ended.pop(ref)
        if isinstance(ended, BaseException):
            raise ended
        return ended

    def pending_reports(self) -> list[tuple[str, int, float]]:
        return []

    def decide(self, key: str, step: int, prune: bool) -> None:
        raise AssertionError("no pruner in these sweeps")

    def cancel(self, ref: int) -> None:
        self.cancelled.append(ref)


def label(request: TrialRequest) -> str:
    """``nf4/0``: the trial's data type and seed."""
    return f"{request.config['quant']['type']}/{request.config['train']['seed']}"


def finished(request: TrialRequest, loss: float = 0.5) -> TrialOutcome:
    return TrialOutcome(request.key, "finished", "trained 2 steps", metrics={"train/final_loss": loss},
                        steps=2, phases={"train": 1.0, "total": 1.5})


def out_of_memory(request: TrialRequest) -> TrialOutcome:
    return TrialOutcome(request.key, "oom", "out of memory: CUDA out of memory. Tried to allocate 2 GiB")


@pytest.fixture
def sweep(tmp_path: Path, tiny_trial) -> Callable[..., Any]:
    """``sweep(behave, ...)`` -> (driver, cluster): a 2 data types x 2 seeds sweep of the tiny
    model, its directory, Optuna storage and MLflow store under ``tmp_path``; a second call
    with the same name resumes it, as ``qsweep resume`` would."""
    spec = {
        "name": "fake", "seeds": [0, 1], "oom_retries": 2,
        "grid": {"data_type": {"NF4": {"quant.type": "nf4"}, "FP4": {"quant.type": "fp4"}}},
        "trial": tiny_trial(lora={"r": 4}, train={"max_steps": 2, "grad_accum_steps": 1}, eval={"tasks": []}),
        "storage": {"tracking": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "fake"},
    }
    spec_file = tmp_path / "fake.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    def make(behave: Behave, *, fail_wait: BaseException | None = None) -> tuple[SweepDriver, FakeCluster]:
        plan = load_plan(spec_file)
        directory = SweepDir.of(tmp_path / "runs", plan.spec.name)
        state = directory.load() if directory.exists() else directory.create(plan)
        cluster = FakeCluster(behave, fail_wait=fail_wait)
        ledger = RunLedger(spec["storage"]["tracking"], "fake", plan, directory, state)
        store = StudyStore(sqlite_url(directory.optuna_file), plan.spec)
        driver = SweepDriver(plan, directory, store, ledger, cluster, concurrency=2,
                             resources=TrialResources(gpus=0, cpus=1), trial_fn=lambda *_: None, poll_s=0.01)
        driver.recover()
        return driver, cluster

    return make


def optuna_states(driver: SweepDriver) -> dict[str, list[str]]:
    url = sqlite_url(driver.directory.optuna_file)
    return {summary.study_name: [t.state.name for t in optuna.load_study(study_name=summary.study_name,
                                                                          storage=url).trials]
            for summary in optuna.get_all_study_summaries(url, include_best_trial=False)}


def trial_runs(driver: SweepDriver) -> dict[str, Any]:
    client = MlflowClient(driver.ledger.uri)
    experiment = client.get_experiment_by_name(driver.ledger.experiment).experiment_id
    runs = client.search_runs([experiment], "tags.`qsweep.role` = 'trial'")
    return {run.data.tags["qsweep.trial_key"]: run for run in runs}


def test_every_trial_ends_once_and_is_recorded(sweep) -> None:
    driver, cluster = sweep(lambda request, attempt: finished(request))
    tally = driver.run()
    assert tally.done == {"finished": 4} and len(cluster.requests) == 4
    assert sorted(optuna_states(driver).values()) == [["COMPLETE"]] * 4
    runs = trial_runs(driver)
    assert len(runs) == 4
    assert {(run.info.status, run.data.tags["qsweep.status"]) for run in runs.values()} == {
        ("FINISHED", "finished")}
    assert {r.run_id for r in cluster.requests} == {run.info.run_id for run in runs.values()}
    assert MlflowClient(driver.ledger.uri).get_run(driver.parent.run_id).info.status == "FINISHED"


def test_every_cells_first_seed_starts_first_and_the_tally_counts_the_running_trials(sweep) -> None:
    """Seeds outer (a cell's later seeds find its untuned base evaluated); what the progress line
    shows after a trial ends counts the trial started in its place."""
    driver, cluster = sweep(lambda request, attempt: finished(request))
    shown: list[tuple[int, int]] = []
    driver.observe = lambda tally: shown.append((tally.ended, tally.running))
    driver.run()
    assert [r.config["train"]["seed"] for r in cluster.requests] == [0, 0, 1, 1]
    assert shown[-1] == (4, 0)
    assert all(running == min(2, 4 - done) for done, running in shown[1:]), shown


def test_out_of_memory_is_retried_with_half_the_micro_batch_until_the_limit(sweep) -> None:
    """oom_retries: 2 — micro-batch 4 -> 2 -> 1 with accumulation 1 -> 2 -> 4 (the same 4 examples
    a step), then the trial fails; the retries start from no checkpoint of the larger batch."""
    def behave(request: TrialRequest, attempt: int) -> Any:
        return out_of_memory(request) if label(request) == "nf4/0" else finished(request)

    driver, cluster = sweep(behave)
    tally = driver.run()
    assert tally.done == {"finished": 3, "failed": 1}
    attempts = [(r.config["train"]["micro_batch_size"], r.config["train"]["grad_accum_steps"],
                 r.discard_other_checkpoints) for r in cluster.requests if label(r) == "nf4/0"]
    assert attempts == [(4, 1, False), (2, 2, True), (1, 4, True)]
    key = next(r.key for r in cluster.requests if label(r) == "nf4/0")
    run = trial_runs(driver)[key]
    assert run.data.tags["qsweep.status"] == "oom" and run.info.status == "FAILED"
    assert run.data.tags["qsweep.oom_retries"] == "2"
    assert "train.micro_batch_size 2 -> 1, train.grad_accum_steps 2 -> 4" in run.data.tags["qsweep.adjusted"]
    assert sorted(optuna_states(driver).values()) == [["COMPLETE"]] * 3 + [["FAIL"]]


def test_a_retried_trial_that_fits_finishes_with_its_smaller_batch(sweep) -> None:
    def behave(request: TrialRequest, attempt: int) -> Any:
        return out_of_memory(request) if attempt == 1 else finished(request)

    driver, cluster = sweep(behave)
    assert driver.run().done == {"finished": 4}
    assert Counter(r.config["train"]["micro_batch_size"] for r in cluster.requests) == {4: 4, 2: 4}


def test_a_crashed_worker_fails_its_trial_and_the_sweep_goes_on(sweep) -> None:
    def behave(request: TrialRequest, attempt: int) -> Any:
        if label(request) == "fp4/1":
            return TrialCrashed("WorkerCrashedError: the worker died")
        return finished(request)

    driver, cluster = sweep(behave)
    assert driver.run().done == {"finished": 3, "failed": 1}
    key = next(r.key for r in cluster.requests if label(r) == "fp4/1")
    crashed = [trial_runs(driver)[key]]
    assert [(r.info.status, r.data.tags["qsweep.status"]) for r in crashed] == [("FAILED", "crashed")]
    assert "worker died 3 times" in crashed[0].data.tags["qsweep.reason"]  # retries: 2 by default


def test_an_interrupted_sweep_resumes_each_trial_exactly_once(sweep) -> None:
    """Ctrl-C while two trials run: their runs say interrupted, Optuna keeps them RUNNING; the
    next driver runs those two again under the same Optuna trials and MLflow runs, then the rest."""
    driver, cluster = sweep(lambda request, attempt: finished(request), fail_wait=KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        driver.run()
    interrupted = cluster.running_at_failure
    assert len(interrupted) == 2 and len(cluster.cancelled) == 2 and len(cluster.requests) == 2
    runs = trial_runs(driver)
    assert {(runs[key].info.status, runs[key].data.tags["qsweep.status"]) for key in interrupted} == {
        ("KILLED", "interrupted")}
    assert sorted(optuna_states(driver).values()) == [[], [], ["RUNNING"], ["RUNNING"]]  # 2 not asked yet

    resumed, cluster = sweep(lambda request, attempt: finished(request))
    assert resumed.tally.resumed == 2 and not resumed.tally.done
    assert resumed.run().done == {"finished": 4}
    assert {r.key for r in cluster.requests[:2]} == interrupted  # the interrupted ones first
    assert len(cluster.requests) == 4
    rerun = {r.run_id for r in cluster.requests if r.key in interrupted}
    assert rerun == {runs[key].info.run_id for key in interrupted}
    assert sorted(optuna_states(resumed).values()) == [["COMPLETE"]] * 4
    assert len(trial_runs(resumed)) == 4


def test_a_trial_that_finished_while_no_driver_listened_is_settled_from_its_run(sweep) -> None:
    """The driver is killed after a worker recorded its trial in MLflow: the next driver takes
    the result from the run (no second training) and runs only what had not finished."""
    recorded: list[str] = []

    def behave(request: TrialRequest, attempt: int) -> Any:
        if not recorded:  # the first trial to end records itself, as the worker does ...
            run = MlflowTracker.attach(request.tracking_uri, request.run_id)
            run.log_metrics({"train/final_loss": 0.25}, step=2)
            run.set_tags({"qsweep.status": "finished", "qsweep.reason": "trained 2 steps"})
            recorded.append(request.key)
            raise DriverKilled  # ... and the driver dies before it hears of it
        return finished(request)

    driver, _ = sweep(behave)
    with pytest.raises(DriverKilled):
        driver.run()
    resumed, cluster = sweep(lambda request, attempt: finished(request))
    assert resumed.tally.done == {"finished": 1} and resumed.tally.resumed == 1  # settled; one to rerun
    assert resumed.run().done == {"finished": 4}
    assert recorded[0] not in {r.key for r in cluster.requests}
    studies = optuna_states(resumed)
    assert sorted(studies.values()) == [["COMPLETE"]] * 4
    settled = [t for s in optuna.get_all_study_summaries(sqlite_url(resumed.directory.optuna_file))
               for t in optuna.load_study(study_name=s.study_name,
                                          storage=sqlite_url(resumed.directory.optuna_file)).trials
               if t.values == [0.25]]
    assert len(settled) == 1


@pytest.mark.parametrize(("micro", "accum", "retries", "expected"), [
    (8, 2, 0, (4, 4)),
    (3, 1, 1, (1, 2)),
    (1, 16, 0, None),  # nothing to halve
    (8, 2, 2, None),   # retries used up
])
def test_the_retry_decision(micro: int, accum: int, retries: int, expected: tuple[int, int] | None) -> None:
    smaller = smaller_micro_batch({"micro_batch_size": micro, "grad_accum_steps": accum}, retries, limit=2)
    if expected is None:
        assert smaller is None
    else:
        assert smaller == {"train.micro_batch_size": expected[0], "train.grad_accum_steps": expected[1]}


def test_checkpoints_of_another_config_are_discarded_and_the_current_ones_kept(tmp_path: Path) -> None:
    def checkpoint(step: int, config_hash: str) -> Path:
        path = tmp_path / "checkpoints" / f"step-{step:06d}"
        path.mkdir(parents=True)
        (path / STATE_FILE).write_text(json.dumps({
            "step": step, "position": step, "last_loss": 1.0, "config_hash": config_hash, "config": {},
            "python_rng": None, "numpy_rng": None}))
        return path

    old, damaged, current = checkpoint(2, "larger-batch"), checkpoint(3, "x"), checkpoint(4, "smaller-batch")
    (damaged / STATE_FILE).write_text("{not json")
    assert discard_other_configs(tmp_path, "smaller-batch") == 2
    assert not old.exists() and not damaged.exists() and current.exists()
    assert discard_other_configs(tmp_path / "nowhere", "smaller-batch") == 0


def test_status_lists_the_sweeps_and_names_them_for_an_unknown_one(sweep, tmp_path: Path, capsys) -> None:
    from qsweep.orchestrator.cli.main import main

    root = tmp_path / "runs"
    assert main(["status", "--root", str(tmp_path / "empty")]) == 0
    assert "no sweeps in" in capsys.readouterr().out
    driver, _ = sweep(lambda request, attempt: finished(request))
    driver.run()
    assert main(["status", "--root", str(root)]) == 0
    listing = capsys.readouterr().out
    assert "fake" in listing and driver.parent.run_id[:8] in listing
    assert main(["status", "nosuch", "--root", str(root)]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "no sweep 'nosuch'" in error and error.endswith("fake")  # the known ones
    assert "config error" not in error
    assert main(["status", "fake", "--root", str(root)]) == 0
    trials = capsys.readouterr().out
    assert "train/final_loss" in trials  # the objective column is headed by its metric
    assert all(len(line) <= 80 for line in trials.splitlines()), trials


def test_a_sweep_grows_by_seeds_and_grid_values_without_rerunning_what_ended(tmp_path: Path,
                                                                             tiny_trial) -> None:
    """``qsweep run`` of a spec that adds seeds and grid values to an existing sweep runs only the
    new trials; one that changes what the sweep has is refused, nothing recorded lost."""
    from qsweep.orchestrator.sweep.launch import prepare_sweep
    from qsweep.trainers.errors import ConfigError

    def spec(seeds: list[int], data_types: dict[str, Any], r: int = 4) -> Any:
        path = tmp_path / "grow.yaml"
        path.write_text(yaml.safe_dump({
            "name": "grow", "seeds": seeds, "grid": {"data_type": data_types},
            "trial": tiny_trial(lora={"r": r}, train={"max_steps": 2, "grad_accum_steps": 1},
                                eval={"tasks": []}),
            "storage": {"tracking": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "grow"}}))
        return load_plan(path)

    def run(plan: Any) -> tuple[SweepDriver, FakeCluster, Any]:
        prepared = prepare_sweep(plan, tmp_path / "runs")
        cluster = FakeCluster(lambda request, attempt: finished(request))
        directory = prepared.directory
        ledger = RunLedger(prepared.tracking_uri, prepared.experiment, plan, directory, prepared.state)
        store = StudyStore(prepared.optuna_url, plan.spec)
        driver = SweepDriver(plan, directory, store, ledger, cluster, concurrency=2,
                             resources=TrialResources(gpus=0, cpus=1), trial_fn=lambda *_: None, poll_s=0.01)
        driver.recover()
        driver.run()
        return driver, cluster, prepared

    two = {"NF4": {"quant.type": "nf4"}, "FP4": {"quant.type": "fp4"}}
    first, cluster, prepared = run(spec([0], two))
    assert prepared.grown is None and len(cluster.requests) == 2
    before = {key: run.info.run_id for key, run in trial_runs(first).items()}

    three = {**two, "FP4 no DQ": {"quant.type": "fp4", "quant.double_quant": False}}
    grown, cluster, prepared = run(spec([0, 1], three))
    assert prepared.grown == "1 seed, 1 cell"
    assert sorted(label(r) + str(r.config["quant"]["double_quant"]) for r in cluster.requests) == [
        "fp4/0False", "fp4/1False", "fp4/1True", "nf4/1True"]  # only the new (cell, seed) pairs
    runs = trial_runs(grown)
    assert len(runs) == 6 and {key: runs[key].info.run_id for key in before} == before
    assert sorted(len(states) for states in optuna_states(grown).values()) == [1] * 6
    parent = MlflowClient(grown.ledger.uri).get_run(grown.parent.run_id)
    assert parent.info.run_id == first.parent.run_id and parent.data.tags["qsweep.trials"] == "6"
    assert prepared.directory.load().fingerprint == load_plan(prepared.directory.spec_file).fingerprint()

    again, cluster, prepared = run(spec([0, 1], three))  # the same spec again: nothing to run
    assert prepared.grown is None and cluster.requests == []

    for changed in (spec([0, 1], three, r=8), spec([1], three), spec([0, 1], two)):
        with pytest.raises(ConfigError, match="grows by more seeds, grid values or search trials"):
            prepare_sweep(changed, tmp_path / "runs")
    assert len(trial_runs(again)) == 6  # nothing recorded lost
