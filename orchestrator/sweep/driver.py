"""The sweep driver: Optuna asks, Ray runs, MLflow records — every trial exactly once.

:class:`SweepDriver` keeps up to ``concurrency`` trials on the cluster. For each free slot it
resumes a trial that an earlier driver left running, or asks the next (cell, seed) study for
a new trial; it creates the trial's MLflow child run under the sweep's parent run and sends
the trial to a fresh Ray worker. When a trial ends it tells Optuna and closes the run.

Exactly-once rests on three facts, all stored outside the driver: every Optuna trial is
created RUNNING before its work starts, carries its MLflow run id as a user attribute, and
its MLflow run carries the trial's key as a tag. A driver that starts again (after a crash,
SIGKILL or Ctrl-C) therefore finds every trial: finished ones are left alone, RUNNING ones
whose run already finished are told, the others run again in the same work directory — from
their last checkpoint, logging only the steps their run lacks.

Failures: a worker process that dies is retried by Ray (``retries``); an out-of-memory error
is retried with half the micro-batch and twice the gradient accumulation (``oom_retries``,
:func:`smaller_micro_batch`), and the change is tagged on the run (the retry's worker removes
the checkpoints of the larger micro-batch); any other exception fails the trial (its traceback is
an artifact of its run) and the sweep goes on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

from qsweep.orchestrator.adapters.cluster import Cluster, TrialCrashed, TrialResources
from qsweep.orchestrator.adapters.search import DONE_STATES, StudyStore, TrialRecord
from qsweep.orchestrator.adapters.tracking import MlflowTracker, find_runs, redact
from qsweep.orchestrator.sweep.planning import Plan, StudyPlan
from qsweep.orchestrator.sweep.sweep_dir import SweepDir, SweepState
from qsweep.orchestrator.sweep.usage import Usage, UsageSummary
from qsweep.orchestrator.trial.worker import TrialOutcome, TrialRequest
from qsweep.trainers.phases import from_metrics as phases_from_metrics
from qsweep.trainers.status import TrialStatus

log = logging.getLogger("qsweep")


@dataclass
class Running:
    """A trial on the cluster."""

    planned: StudyPlan
    number: int
    key: str
    run: MlflowTracker
    request: TrialRequest
    oom_retries: int
    started: float = field(default_factory=time.monotonic)


@dataclass
class Tally:
    """What the sweep has done so far (for progress displays and the final summary)."""

    total: int
    done: dict[str, int] = field(default_factory=dict)
    """Ended trials by status: finished, pruned, failed, nan."""
    running: int = 0
    best: float | None = None
    best_key: str | None = None
    durations: list[float] = field(default_factory=list)
    resumed: int = 0
    """Trials an earlier driver left running that this one took over."""
    usage: UsageSummary | None = None
    """How this driver's trials used the GPUs; set when the sweep ends."""

    @property
    def ended(self) -> int:
        return sum(self.done.values())

    def eta_s(self, concurrency: int) -> float | None:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        remaining = self.total - self.ended
        return mean * remaining / max(1, min(concurrency, remaining or 1))


Observer = Callable[[Tally], None]


def trial_key(planned: StudyPlan, number: int) -> str:
    return f"{planned.cell.key}/seed{planned.seed}/t{number}"


class SweepDriver:
    """Runs one sweep to completion (see the module docstring).

    Args:
        plan: the validated plan.
        directory: the sweep's directory (state, Optuna SQLite, trial work dirs).
        state: its ``sweep.json``.
        store: the Optuna studies.
        tracking_uri / experiment: where MLflow records go.
        cluster: a connected Ray cluster.
        concurrency: trials at a time.
        resources: GPUs and CPUs each trial asks for.
        trial_fn: what a worker runs (``qsweep.orchestrator.trial.worker.execute``; benchmarks pass a stub).
        observe: called with the tally whenever it changes.
    """

    def __init__(self, plan: Plan, directory: SweepDir, state: SweepState, store: StudyStore,
                 tracking_uri: str, experiment: str, cluster: Cluster, concurrency: int,
                 resources: TrialResources, trial_fn: Callable[..., TrialOutcome],
                 observe: Observer | None = None, poll_s: float = 0.2):
        self.plan, self.spec = plan, plan.spec
        self.directory, self.state, self.store = directory, state, store
        self.uri, self.experiment = tracking_uri, experiment
        self.cluster, self.concurrency, self.resources = cluster, concurrency, resources
        self.trial_fn, self.observe, self.poll_s = trial_fn, observe or (lambda tally: None), poll_s
        self.tally = Tally(total=plan.total_trials)
        self.in_flight: dict[Any, Running] = {}
        self.backlog: deque[tuple[StudyPlan, TrialRecord]] = deque()
        self.remaining: dict[str, int] = {}
        self.children: dict[str, str] = {}
        self.parent: MlflowTracker | None = None
        self.pruning = bool(self.spec.search and self.spec.search.pruner)
        self._studies = plan.studies()
        self._by_name = {p.name: p for p in self._studies}
        self._cursor = 0
        # MLflow writes (opening and closing trial runs) happen in the background: the loop
        # only waits for what a trial needs to start, its run id. A local SQLite store gets one
        # writer thread; a tracking server several.
        self._records = futures.ThreadPoolExecutor(
            max_workers=8 if tracking_uri.startswith(("http://", "https://")) else 1,
            thread_name_prefix="mlflow")
        self.opening: dict[futures.Future, tuple[StudyPlan, TrialRecord]] = {}
        self.closing: list[futures.Future] = []
        self.usage = Usage(compute_gpus=resources.compute_gpus,
                           capacity=concurrency * resources.gpus if resources.gpus else concurrency)

    # ----------------------------------------------------------------- set-up
    def open_parent(self) -> MlflowTracker:
        """The sweep's parent run: found by the sweep id, or created once."""
        if self.state.parent_run_id:
            parent = MlflowTracker.attach(self.uri, self.state.parent_run_id)
            parent.reopen()
        else:
            found = find_runs(self.uri, self.experiment, {"qsweep.sweep_id": self.state.sweep_id,
                                                          "qsweep.role": "sweep"})
            if found:
                parent = MlflowTracker.attach(self.uri, found[0].info.run_id)
                parent.reopen()
            else:
                parent = MlflowTracker.start(self.uri, self.experiment, self.spec.name, tags={
                    "qsweep.role": "sweep", "qsweep.sweep": self.spec.name,
                    "qsweep.sweep_id": self.state.sweep_id})
                self._describe_parent(parent)
            self.state.parent_run_id = parent.run_id
            self.directory.save(self.state)
        self.parent = parent
        return parent

    def _describe_parent(self, parent: MlflowTracker) -> None:
        from qsweep.orchestrator.trial.fingerprint import environment_fingerprint

        spec = self.spec
        parent.log_params({
            "sweep.cells": len(self.plan.cells), "sweep.seeds": spec.seeds,
            "sweep.trials": self.plan.total_trials, "sweep.grid": {a.name: [lbl for lbl, _ in a.values]
                                                                   for a in spec.axes()},
            "sweep.search": list(spec.search.space) if spec.search else None,
            "sweep.sampler": spec.search.sampler if spec.search else None,
            "sweep.objectives": [f"{o.direction} {o.metric}" for o in spec.objectives],
        })
        fingerprint = environment_fingerprint()
        parent.set_tags({"qsweep.project_commit": str(fingerprint["project_commit"]),
                         "qsweep.fingerprint": self.state.fingerprint})
        redacted = self.directory.path / "spec.redacted.yaml"
        text = self.directory.spec_file.read_text()
        base_uri = self.plan.base.get("tracking", {}).get("uri")
        for uri in (spec.storage.optuna, spec.storage.tracking, base_uri):
            if uri:
                text = text.replace(uri, redact(uri))
        redacted.write_text(text)
        parent.log_artifact(redacted)
        plan_file = self.directory.path / "plan.json"
        import json

        plan_file.write_text(json.dumps([{"cell": c.key, "labels": c.labels, "settings": c.settings}
                                         for c in self.plan.cells], indent=1, default=str))
        parent.log_artifact(plan_file)

    def recover(self) -> None:
        """Find what earlier drivers did: finished trials, and trials left running."""
        for run in find_runs(self.uri, self.experiment, {"qsweep.sweep_id": self.state.sweep_id,
                                                         "qsweep.role": "trial"}):
            key = run.data.tags.get("qsweep.trial_key")
            if key:
                self.children.setdefault(key, run.info.run_id)
        for planned in self._studies:
            records = self.store.trials(planned)
            asked = 0
            for record in records:
                if record.state == "WAITING":
                    continue  # queued parameters (search.enqueue): the next asks take them
                asked += 1
                if record.state in DONE_STATES:
                    self._count(record.state, record.outcome.get("status"))
                elif record.state == "RUNNING" and not self._settle_from_run(planned, record):
                    self.backlog.append((planned, record))
                    self.tally.resumed += 1
            self.remaining[planned.name] = max(0, planned.n_trials - asked)
        self.observe(self.tally)

    def _count(self, state: str, status: str | None) -> None:
        name = status or TrialStatus.of_optuna_state(state)
        self.tally.done[name] = self.tally.done.get(name, 0) + 1

    def _settle_from_run(self, planned: StudyPlan, record: TrialRecord) -> bool:
        """Tell Optuna about a trial whose run ended while no driver listened; True if it had."""
        key = trial_key(planned, record.number)
        run_id = self.children.get(key) or record.attrs.get("run_id")
        if run_id is None:
            return False
        run = MlflowTracker.attach(self.uri, run_id).client.get_run(run_id)
        status = run.data.tags.get("qsweep.status")
        if status not in (TrialStatus.FINISHED, TrialStatus.PRUNED):
            return False
        status = TrialStatus(status)
        values = [run.data.metrics.get(o.metric) for o in self.spec.objectives]
        if status == TrialStatus.FINISHED and any(v is None for v in values):
            return False
        state = status.optuna_state
        self.store.set_attrs(planned, record.number, {"outcome": {
            "status": status, "reason": run.data.tags.get("qsweep.reason", ""),
            "phases": phases_from_metrics(run.data.metrics)}})
        self.store.tell(planned, record.number, state, values if status == TrialStatus.FINISHED else None)
        self._count(state, status)
        if status == TrialStatus.FINISHED:
            self._update_best(key, values[0])
        return True

    # --------------------------------------------------------------- the loop
    def run(self) -> Tally:
        """Run until every planned trial has ended; Ctrl-C stops cleanly (resumable)."""
        began = time.monotonic()
        try:
            while True:
                self._fill()
                if not self.in_flight and not self.opening:
                    break
                self._relay_reports()
                if self.in_flight:
                    # Poll briefly while runs are being opened, so their trials start soon.
                    timeout = 0.02 if self.opening else self.poll_s
                    for ref in self.cluster.wait(list(self.in_flight), timeout):
                        self._collect(ref)
                else:
                    futures.wait(self.opening, timeout=self.poll_s, return_when=futures.FIRST_COMPLETED)
        except KeyboardInterrupt:
            self._interrupt()
            raise
        finally:
            self._flush_records()
        assert self.parent is not None
        if self.usage.trials:
            self.tally.usage = self.usage.summary(time.monotonic() - began)
            self.parent.log_metrics(self.tally.usage.metrics(), step=0)
        self.parent.set_tags({"qsweep.status": TrialStatus.FINISHED})
        self.parent.finish(TrialStatus.FINISHED.mlflow_status)
        return self.tally

    def _fill(self) -> None:
        """Ask for trials while slots are free; start those whose MLflow run is ready."""
        while len(self.in_flight) + len(self.opening) < self.concurrency:
            work = self._next()
            if work is None:
                break
            planned, record = work
            key = trial_key(planned, record.number)
            self.opening[self._records.submit(self._child_run, planned, record, key)] = (planned, record)
        for future in [f for f in self.opening if f.done()]:
            planned, record = self.opening.pop(future)
            self._submit(planned, record, future.result())

    def _flush_records(self) -> None:
        """Wait for the MLflow writes still in the background (runs being opened or closed)."""
        for future in futures.as_completed([*self.closing, *self.opening]):
            if future.exception() is not None:
                log.error("an MLflow record failed: %s", future.exception())
        self.closing.clear()

    def _next(self) -> tuple[StudyPlan, TrialRecord] | None:
        if self.backlog:
            return self.backlog.popleft()
        # Round robin over the studies, so every (cell, seed) advances together.
        for _ in range(len(self._studies)):
            planned = self._studies[self._cursor % len(self._studies)]
            self._cursor += 1
            if self.remaining.get(planned.name, planned.n_trials) > 0:
                self.remaining[planned.name] = self.remaining.get(planned.name, planned.n_trials) - 1
                return planned, self.store.ask(planned)
        return None

    def _submit(self, planned: StudyPlan, record: TrialRecord, run: MlflowTracker) -> None:
        key = trial_key(planned, record.number)
        adjust = dict(record.attrs.get("adjust") or {})
        oom_retries = int(record.attrs.get("oom_retries", 0))
        workdir = self.directory.trial_dir(planned, record.number)
        config = self.plan.trial_config(planned.cell, planned.seed, {**record.params, **adjust})
        pruner = self.spec.search.pruner if self.spec.search else None
        request = TrialRequest(key=key, config=config.to_dict(), run_id=run.run_id, tracking_uri=self.uri,
                               workdir=str(workdir), objective=self.spec.objectives[0].metric,
                               report_every=pruner.report_every if pruner else None,
                               submitted_at=time.time(), gpu_lease=self.resources.overlap,
                               load_ahead=self.resources.load_ahead,
                               discard_other_checkpoints=bool(adjust))
        if record.attrs.get("run_id") != run.run_id:
            self.store.set_attrs(planned, record.number, {"run_id": run.run_id})
        ref = self.cluster.submit(self.trial_fn, request, gpus=self.resources.gpus, cpus=self.resources.cpus,
                                  retries=self.spec.retries, pruning=self.pruning)
        self.in_flight[ref] = Running(planned, record.number, key, run, request, oom_retries)
        self.tally.running = len(self.in_flight)
        self.observe(self.tally)

    def _child_run(self, planned: StudyPlan, record: TrialRecord, key: str) -> MlflowTracker:
        run_id = self.children.get(key) or record.attrs.get("run_id")
        if run_id:
            run = MlflowTracker.attach(self.uri, run_id)
            run.reopen()
            run.set_tags({"qsweep.status": TrialStatus.RUNNING})
            return run
        assert self.parent is not None
        tags = {"qsweep.role": "trial", "qsweep.sweep": self.spec.name,
                "qsweep.sweep_id": self.state.sweep_id,
                "qsweep.trial_key": key, "qsweep.cell": planned.cell.key, "qsweep.seed": str(planned.seed),
                "qsweep.optuna_study": planned.name, "qsweep.optuna_trial": str(record.number),
                "qsweep.status": "scheduled",
                **{f"qsweep.axis.{axis}": label for axis, label in planned.cell.labels.items()}}
        name = f"{planned.cell.describe()} seed={planned.seed} #{record.number}"
        run = MlflowTracker.start(self.uri, self.experiment, name, tags=tags,
                                  parent_run_id=self.parent.run_id)
        self.children[key] = run.run_id
        return run

    def _relay_reports(self) -> None:
        if not self.pruning:
            return
        by_key = {entry.key: entry for entry in self.in_flight.values()}
        for key, step, value in self.cluster.pending_reports():
            entry = by_key.get(key)
            prune = entry is not None and self.store.report(entry.planned, entry.number, step, value)
            self.cluster.decide(key, step, prune)

    def _collect(self, ref: Any) -> None:
        entry = self.in_flight.pop(ref)
        try:
            outcome: TrialOutcome = self.cluster.result(ref)
        except TrialCrashed as crash:
            reason = f"worker died {self.spec.retries + 1} times: {crash}"
            outcome = TrialOutcome(entry.key, "crashed", reason)
        self.usage.add(outcome.phases)
        if outcome.status == "oom" and self._retry_smaller(entry, outcome):
            return
        self._end(entry, outcome)

    def _retry_smaller(self, entry: Running, outcome: TrialOutcome) -> bool:
        """Resubmit an out-of-memory trial with half the micro-batch; False when it can't shrink."""
        retries = entry.oom_retries
        train = entry.request.config["train"]
        smaller = smaller_micro_batch(train, retries, self.spec.oom_retries)
        if smaller is None:
            return False
        change = ", ".join(f"{key} {train[key.split('.')[1]]} -> {value}" for key, value in smaller.items())
        change += f" after {outcome.reason}"
        log.warning("trial %s ran out of memory; retrying with %s", entry.key, change)
        attrs = {"adjust": smaller, "oom_retries": retries + 1}
        self.store.set_attrs(entry.planned, entry.number, attrs)
        entry.run.set_tags({"qsweep.adjusted": change, "qsweep.oom_retries": str(retries + 1)})
        record = TrialRecord(entry.planned.name, entry.number, "RUNNING", _searched(entry.request, self.spec),
                             None, {**attrs, "run_id": entry.run.run_id}, None)
        self._submit(entry.planned, record, entry.run)
        return True

    def _end(self, entry: Running, outcome: TrialOutcome) -> None:
        status, reason = TrialStatus(outcome.status), outcome.reason
        values = None
        if status == TrialStatus.FINISHED:
            values = [outcome.metrics.get(o.metric) for o in self.spec.objectives]
            missing = [o.metric for o, v in zip(self.spec.objectives, values, strict=True) if v is None]
            if missing:
                status, reason = TrialStatus.FAILED, f"the trial reported no {', '.join(missing)}"
        state = status.optuna_state
        # Attributes first: a finished Optuna trial takes no more writes.
        self.store.set_attrs(entry.planned, entry.number, {"outcome": {
            "status": status, "reason": reason, "seconds": round(outcome.seconds, 3), "host": outcome.host,
            "resumed_from_step": outcome.resumed_from_step, "phases": outcome.phases}})
        self.store.tell(entry.planned, entry.number, state, values if state == "COMPLETE" else None)
        tags = {"qsweep.status": status, "qsweep.reason": reason}
        if outcome.resumed_from_step:
            tags["qsweep.resumed_from_step"] = str(outcome.resumed_from_step)
        self.closing.append(self._records.submit(_close_run, entry.run, tags, status.mlflow_status))
        if status.is_failure:
            log.warning("trial %s %s: %s", entry.key, status, reason)
            status = TrialStatus.FAILED
        self.tally.done[status] = self.tally.done.get(status, 0) + 1
        self.tally.durations.append(time.monotonic() - entry.started)
        self.tally.running = len(self.in_flight)
        if values is not None and state == "COMPLETE":
            self._update_best(entry.key, values[0])
        self.observe(self.tally)

    def _update_best(self, key: str, value: float) -> None:
        better = (self.tally.best is None or
                  (value > self.tally.best if self.spec.objectives[0].direction == "maximize"
                   else value < self.tally.best))
        if better:
            self.tally.best, self.tally.best_key = value, key

    def _interrupt(self) -> None:
        """Ctrl-C: stop the running trials; they stay RUNNING in Optuna and resume next time."""
        log.warning("interrupted: stopping %d running trials", len(self.in_flight))
        for ref, entry in self.in_flight.items():
            self.cluster.cancel(ref)
            try:
                entry.run.set_tags({"qsweep.status": TrialStatus.INTERRUPTED})
                entry.run.finish(TrialStatus.INTERRUPTED.mlflow_status)
            except Exception:  # noqa: BLE001 - stopping matters more than this record
                log.exception("could not mark %s interrupted", entry.key)
        self.in_flight.clear()
        self._flush_records()
        if self.parent is not None:
            self.parent.set_tags({"qsweep.status": TrialStatus.INTERRUPTED})
            self.parent.finish(TrialStatus.INTERRUPTED.mlflow_status)


def smaller_micro_batch(train: dict[str, Any], retries: int, limit: int) -> dict[str, int] | None:
    """What an out-of-memory trial is retried with: half the micro-batch and twice the gradient
    accumulation (the optimizer step sees the same examples); None when ``limit`` retries are
    used up or the micro-batch is already 1."""
    micro, accum = train["micro_batch_size"], train["grad_accum_steps"]
    if retries >= limit or micro < 2:
        return None
    return {"train.micro_batch_size": micro // 2, "train.grad_accum_steps": accum * 2}


def _close_run(run: MlflowTracker, tags: dict[str, str], status: str) -> None:
    run.set_tags(tags)
    run.finish(status)


def _searched(request: TrialRequest, spec: Any) -> dict[str, Any]:
    """The sampled values of a trial, read back from its config."""
    if spec.search is None:
        return {}
    values = {}
    for key in spec.search.space:
        section, leaf = key.split(".")
        values[key] = request.config[section][leaf]
    return values
