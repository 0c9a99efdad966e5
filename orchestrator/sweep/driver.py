"""The sweep driver: Optuna asks, Ray runs, MLflow records — every trial exactly once.

:class:`SweepDriver` keeps up to ``concurrency`` trials on the cluster. For each free slot it
resumes a trial that an earlier driver left running, or asks the next (cell, seed) study for
a new trial (every cell's first seed before any cell's second); it creates the trial's MLflow
child run under the sweep's parent run and sends the trial to a Ray worker
(``qsweep.orchestrator.adapters.cluster``). When a trial ends it tells Optuna and closes the run.

Exactly-once rests on three facts, all stored outside the driver: every Optuna trial is
created RUNNING before its work starts, carries its MLflow run id as a user attribute, and
its MLflow run carries the trial's key as a tag. A driver that starts again (after a crash,
SIGKILL or Ctrl-C) therefore finds every trial: finished ones are left alone, RUNNING ones
whose run already finished are told, the others run again in the same work directory — from
their last checkpoint, logging only the steps their run lacks.

Parts: the MLflow records are :class:`~qsweep.orchestrator.sweep.ledger.RunLedger`'s, the
progress tally :class:`~qsweep.orchestrator.sweep.progress.Tally`, the OOM retry decision the pure
function :func:`smaller_micro_batch`; this module is the scheduling loop.

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
from qsweep.orchestrator.adapters.search import DONE_STATES, StudyStore, TrialRecord, live_trials
from qsweep.orchestrator.adapters.storage_faults import StoreFailed, fault_kind_in
from qsweep.orchestrator.adapters.tracking import MlflowTracker
from qsweep.orchestrator.sweep.ledger import RunLedger
from qsweep.orchestrator.sweep.planning import Plan, StudyPlan
from qsweep.orchestrator.sweep.progress import Observer, Tally
from qsweep.orchestrator.sweep.sweep_dir import SweepDir
from qsweep.orchestrator.sweep.usage import Usage
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
    slot: int
    """The trial number whose key and work directory it uses (``TrialRecord.slot``)."""
    started: float = field(default_factory=time.monotonic)


class SweepDriver:
    """Runs one sweep to completion (see the module docstring).

    Args:
        plan: the validated plan.
        directory: the sweep's directory (the trials' work directories).
        store: the sweep's Optuna studies.
        ledger: its MLflow records.
        cluster: a connected Ray cluster.
        concurrency: trials at a time.
        resources: GPUs and CPUs each trial asks for.
        trial_fn: what a worker runs (``qsweep.orchestrator.trial.worker.execute``; benchmarks
            pass a stub).
        observe: called with the tally whenever it changes.
    """

    def __init__(self, plan: Plan, directory: SweepDir, store: StudyStore, ledger: RunLedger,
                 cluster: Cluster, *, concurrency: int, resources: TrialResources,
                 trial_fn: Callable[..., TrialOutcome], observe: Observer | None = None, poll_s: float = 0.2):
        self.plan, self.spec, self.directory = plan, plan.spec, directory
        self.store, self.ledger = store, ledger
        self.cluster, self.concurrency, self.resources = cluster, concurrency, resources
        self.trial_fn, self.observe, self.poll_s = trial_fn, observe or (lambda tally: None), poll_s
        self.tally = Tally(total=plan.total_trials)
        self.in_flight: dict[Any, Running] = {}
        self.opening: dict[futures.Future, tuple[StudyPlan, TrialRecord]] = {}
        """Trials whose MLflow run is being opened (in the background) before they start."""
        self.backlog: deque[tuple[StudyPlan, TrialRecord]] = deque()
        self.remaining: dict[str, int] = {}
        self.pruning = bool(self.spec.search and self.spec.search.pruner)
        # Every cell's first seed before any cell's second: a cell's later seeds then find its
        # untuned base evaluated (qsweep.orchestrator.trial.baseline), and a first look at every
        # cell comes early.
        self._studies = sorted(plan.studies(), key=lambda study: self.spec.seeds.index(study.seed))
        self._cursor = 0
        self._published: tuple[Any, ...] | None = None
        self.usage = Usage(compute_gpus=resources.compute_gpus,
                           capacity=concurrency * resources.gpus if resources.gpus else concurrency)

    @property
    def parent(self) -> MlflowTracker | None:
        """The sweep's MLflow parent run."""
        return self.ledger.parent

    # ----------------------------------------------------------------- set-up
    def recover(self, retry_failed: bool = False) -> None:
        """Find what earlier drivers did: finished trials, and trials left running; with
        ``retry_failed``, failed trials run again in their place (a new Optuna trial of the same
        parameters continues the failed one's MLflow run and work directory)."""
        self.ledger.open_parent()
        self.ledger.find_children()
        failed: list[tuple[StudyPlan, TrialRecord]] = []
        for planned in self._studies:
            asked = 0
            for record in live_trials(self.store.trials(planned)):
                if record.state == "WAITING":
                    continue  # queued parameters (search.enqueue): the next asks take them
                asked += 1
                if record.state in DONE_STATES:
                    status = record.outcome.get("status") or TrialStatus.of_optuna_state(record.state)
                    if retry_failed and status == TrialStatus.FAILED:
                        failed.append((planned, record))
                    else:
                        self.tally.count(status)
                elif record.state == "RUNNING" and not self._settle_from_run(planned, record):
                    self.backlog.append((planned, record))
                    self.tally.resumed += 1
            self.remaining[planned.name] = max(0, planned.n_trials - asked)
        for planned, record in failed:
            *queued, retry = self.store.ask_again(planned, record)
            for earlier in queued:  # the spec's queued points that Optuna handed out first
                self.backlog.append((planned, earlier))
                self.remaining[planned.name] = max(0, self.remaining[planned.name] - 1)
            self.backlog.append((planned, retry))
            self.tally.retried += 1
        self.observe(self.tally)

    def _settle_from_run(self, planned: StudyPlan, record: TrialRecord) -> bool:
        """Tell Optuna about a trial whose run ended while no driver listened; True if it had."""
        key = planned.trial_key(record.slot)
        ended = self.ledger.recorded_end(key, record.attrs.get("run_id"))
        if ended is None:
            return False
        values = [ended.metrics.get(o.metric) for o in self.spec.objectives]
        if ended.status == TrialStatus.FINISHED and any(v is None for v in values):
            return False
        self.store.set_attrs(planned, record.number, {"outcome": {
            "status": ended.status, "reason": ended.reason, "phases": phases_from_metrics(ended.metrics)}})
        finished = ended.status == TrialStatus.FINISHED
        self.store.tell(planned, record.number, ended.status.optuna_state, values if finished else None)
        self.tally.count(ended.status)
        if finished:
            self.tally.offer_best(key, values[0], self._maximize)
        return True

    @property
    def _maximize(self) -> bool:
        return self.spec.objectives[0].direction == "maximize"

    # --------------------------------------------------------------- the loop
    def run(self) -> Tally:
        """Run until every planned trial has ended; Ctrl-C stops cleanly (resumable)."""
        began = time.monotonic()
        try:
            while True:
                self._fill()
                self._publish()
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
            self.ledger.flush(self.opening)
        if self.usage.trials:
            self.tally.usage = self.usage.summary(time.monotonic() - began)
        self.ledger.finish(TrialStatus.FINISHED, self.tally.usage.metrics() if self.tally.usage else None)
        return self.tally

    def _fill(self) -> None:
        """Ask for trials while slots are free; start those whose MLflow run is ready."""
        while len(self.in_flight) + len(self.opening) < self.concurrency:
            work = self._next()
            if work is None:
                break
            self.opening[self.ledger.open_child(*work)] = work
        for future in [f for f in self.opening if f.done()]:
            planned, record = self.opening.pop(future)
            self._submit(planned, record, future.result())

    def _publish(self) -> None:
        """Show the tally when it changed, once the free slots are filled again: a trial that
        ended and the one started in its place show as one change (running stays true)."""
        running = len(self.in_flight) + len(self.opening)
        seen = (self.tally.ended, running, self.tally.best)
        if seen != self._published:
            self.tally.running, self._published = running, seen
            self.observe(self.tally)

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
        key = planned.trial_key(record.slot)
        adjust = dict(record.attrs.get("adjust") or {})
        oom_retries = int(record.attrs.get("oom_retries", 0))
        workdir = self.directory.trial_dir(planned, record.slot)
        config = self.plan.trial_config(planned.cell, planned.seed, {**record.params, **adjust})
        pruner = self.spec.search.pruner if self.spec.search else None
        request = TrialRequest(key=key, config=config.to_dict(), run_id=run.run_id,
                               tracking_uri=self.ledger.uri, workdir=str(workdir),
                               objective=self.spec.objectives[0].metric,
                               report_every=pruner.report_every if pruner else None,
                               submitted_at=time.time(), gpu_lease=self.resources.overlap,
                               load_ahead=self.resources.load_ahead,
                               discard_other_checkpoints=bool(adjust))
        if record.attrs.get("run_id") != run.run_id:
            self.store.set_attrs(planned, record.number, {"run_id": run.run_id})
        ref = self.cluster.submit(self.trial_fn, request, gpus=self.resources.gpus, cpus=self.resources.cpus,
                                  retries=self.spec.retries, pruning=self.pruning)
        self.in_flight[ref] = Running(planned, record.number, key, run, request, oom_retries, record.slot)

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
                             None, {**attrs, "run_id": entry.run.run_id, "retry_of": entry.slot}, None)
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
        if status == TrialStatus.FAILED and fault_kind_in(reason):
            # Not the trial's fault: a store it writes failed (a full disk). Left RUNNING in
            # Optuna, it runs again on resume, from its checkpoint, once the cause is fixed.
            raise StoreFailed(f"trial {entry.key} could not write: {reason}")
        state = status.optuna_state
        # Attributes first: a finished Optuna trial takes no more writes.
        self.store.set_attrs(entry.planned, entry.number, {"outcome": {
            "status": status, "reason": reason, "seconds": round(outcome.seconds, 3), "host": outcome.host,
            "resumed_from_step": outcome.resumed_from_step, "phases": outcome.phases}})
        self.store.tell(entry.planned, entry.number, state, values if state == "COMPLETE" else None)
        tags = {"qsweep.reason": reason}
        if outcome.resumed_from_step:
            tags["qsweep.resumed_from_step"] = str(outcome.resumed_from_step)
        self.ledger.close_child(entry.run, status, tags)
        if status.is_failure:
            log.warning("trial %s %s: %s", entry.key, status, reason)
            status = TrialStatus.FAILED
        self.tally.count(status)
        self.tally.durations.append(time.monotonic() - entry.started)
        if values is not None and state == "COMPLETE":
            self.tally.offer_best(entry.key, values[0], self._maximize)

    def _interrupt(self) -> None:
        """Ctrl-C: stop the running trials; they stay RUNNING in Optuna and resume next time."""
        log.warning("interrupted: stopping %d running trials", len(self.in_flight))
        for ref in self.in_flight:
            self.cluster.cancel(ref)
        runs = {entry.key: entry.run for entry in self.in_flight.values()}
        self.in_flight.clear()
        self.ledger.flush(self.opening)
        self.ledger.interrupt(runs)


def smaller_micro_batch(train: dict[str, Any], retries: int, limit: int) -> dict[str, int] | None:
    """What an out-of-memory trial is retried with: half the micro-batch and twice the gradient
    accumulation (the optimizer step sees the same examples); None when ``limit`` retries are
    used up or the micro-batch is already 1."""
    micro, accum = train["micro_batch_size"], train["grad_accum_steps"]
    if retries >= limit or micro == "auto" or micro < 2:
        return None  # auto chose the largest micro-batch that its probe found to fit
    return {"train.micro_batch_size": micro // 2, "train.grad_accum_steps": accum * 2}


def _searched(request: TrialRequest, spec: Any) -> dict[str, Any]:
    """The sampled values of a trial, read back from its config."""
    if spec.search is None:
        return {}
    values = {}
    for key in spec.search.space:
        section, leaf = key.split(".")
        values[key] = request.config[section][leaf]
    return values
