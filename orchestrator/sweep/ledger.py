"""A sweep's MLflow records: one parent run, one child run per trial, found again after a restart.

The parent run is found by the sweep's id (``qsweep.sweep_id``) or created once, with the
sweep's parameters, its redacted spec and its plan as artifacts. Each trial's child run carries
the trial's key (``qsweep.trial_key``), so a driver that starts again finds every run an earlier
one opened. Opening and closing child runs happens on background threads: the driver's loop
only waits for what a trial needs to start, its run id. A local SQLite store gets one writer
thread, a tracking server several.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass

from qsweep.orchestrator.adapters.search import TrialRecord
from qsweep.orchestrator.adapters.tracking import MlflowTracker, find_runs, redact
from qsweep.orchestrator.sweep.planning import Plan, StudyPlan
from qsweep.orchestrator.sweep.sweep_dir import SweepDir, SweepState
from qsweep.trainers.status import TrialStatus

log = logging.getLogger("qsweep")


@dataclass(frozen=True)
class RecordedEnd:
    """How a trial's run says the trial ended (read back after a restart)."""

    status: TrialStatus
    reason: str
    metrics: dict[str, float]


class RunLedger:
    """The MLflow side of one sweep (see the module docstring)."""

    def __init__(self, uri: str, experiment: str, plan: Plan, directory: SweepDir, state: SweepState):
        self.uri, self.experiment = uri, experiment
        self.plan, self.directory, self.state = plan, directory, state
        self.parent: MlflowTracker | None = None
        self.children: dict[str, str] = {}
        """Run ids of the trials' child runs by trial key."""
        self._writes = futures.ThreadPoolExecutor(
            max_workers=8 if uri.startswith(("http://", "https://")) else 1, thread_name_prefix="mlflow")
        self._closing: list[futures.Future] = []

    # ------------------------------------------------------------- the parent
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
                parent = MlflowTracker.start(self.uri, self.experiment, self.plan.spec.name, tags={
                    "qsweep.role": "sweep", "qsweep.sweep": self.plan.spec.name,
                    "qsweep.sweep_id": self.state.sweep_id}, root=self.directory.path.parents[1])
                self._describe_parent(parent)
            self.state.parent_run_id = parent.run_id
            self.directory.save(self.state)
        if parent.client.get_run(parent.run_id).data.tags.get("qsweep.fingerprint") != self.state.fingerprint:
            self._describe_parent(parent)  # the sweep grew: its new spec, plan and size
        self.parent = parent
        return parent

    def _describe_parent(self, parent: MlflowTracker) -> None:
        from qsweep.orchestrator.trial.fingerprint import environment_fingerprint

        spec = self.plan.spec
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
                         "qsweep.fingerprint": self.state.fingerprint,
                         "qsweep.trials": str(self.plan.total_trials)})  # params stay as first logged
        redacted = self.directory.path / "spec.redacted.yaml"
        text = self.directory.spec_file.read_text()
        base_uri = self.plan.base.get("tracking", {}).get("uri")
        for uri in (spec.storage.optuna, spec.storage.tracking, base_uri):
            if uri:
                text = text.replace(uri, redact(uri))
        redacted.write_text(text)
        parent.log_artifact(redacted)
        plan_file = self.directory.path / "plan.json"
        plan_file.write_text(json.dumps([{"cell": c.key, "labels": c.labels, "settings": c.settings}
                                         for c in self.plan.cells], indent=1, default=str))
        parent.log_artifact(plan_file)

    def finish(self, status: TrialStatus, metrics: dict[str, float] | None = None) -> None:
        """Close the parent run (after the trials' records are written)."""
        self.flush()
        if self.parent is None:
            return
        if metrics:
            self.parent.log_metrics(metrics, step=0)
        self.parent.set_tags({"qsweep.status": status})
        self.parent.finish(status.mlflow_status)

    # ------------------------------------------------------------ the trials
    def find_children(self) -> None:
        """The child runs earlier drivers opened, by trial key."""
        for run in find_runs(self.uri, self.experiment, {"qsweep.sweep_id": self.state.sweep_id,
                                                         "qsweep.role": "trial"}):
            key = run.data.tags.get("qsweep.trial_key")
            if key:
                self.children.setdefault(key, run.info.run_id)

    def recorded_end(self, key: str, run_id: str | None) -> RecordedEnd | None:
        """How the trial's run ended, if it did (finished or pruned) while no driver listened."""
        run_id = self.children.get(key) or run_id
        if run_id is None:
            return None
        run = MlflowTracker.attach(self.uri, run_id).client.get_run(run_id)
        status = run.data.tags.get("qsweep.status")
        if status not in (TrialStatus.FINISHED, TrialStatus.PRUNED):
            return None
        reason = run.data.tags.get("qsweep.reason", "")
        return RecordedEnd(TrialStatus(status), reason, dict(run.data.metrics))

    def open_child(self, planned: StudyPlan, record: TrialRecord) -> futures.Future:
        """The trial's run, opened in the background: reopened if it exists, else created."""
        return self._writes.submit(self._child_run, planned, record)

    def _child_run(self, planned: StudyPlan, record: TrialRecord) -> MlflowTracker:
        key = planned.trial_key(record.slot)
        run_id = self.children.get(key) or record.attrs.get("run_id")
        if run_id:
            run = MlflowTracker.attach(self.uri, run_id)
            run.reopen()
            tags = {"qsweep.status": TrialStatus.RUNNING, "qsweep.optuna_trial": str(record.number)}
            if record.slot != record.number:  # a retry of the failed trial this run recorded
                tags["qsweep.retried_from_trial"] = str(record.slot)
            run.set_tags(tags)
            return run
        assert self.parent is not None, "open_parent first"
        tags = {"qsweep.role": "trial", "qsweep.sweep": self.plan.spec.name,
                "qsweep.sweep_id": self.state.sweep_id,
                "qsweep.trial_key": key, "qsweep.cell": planned.cell.key, "qsweep.seed": str(planned.seed),
                "qsweep.optuna_study": planned.name, "qsweep.optuna_trial": str(record.number),
                "qsweep.status": "scheduled",
                **{f"qsweep.axis.{axis}": label for axis, label in planned.cell.labels.items()}}
        run = MlflowTracker.start(self.uri, self.experiment, self.plan.run_name(planned, record.number),
                                  tags=tags, parent_run_id=self.parent.run_id)
        # the ablation axes as params: parallel coordinates and grouped tables take params
        run.log_params({f"axis.{axis}": label for axis, label in planned.cell.labels.items()})
        self.children[key] = run.run_id
        return run

    def close_child(self, run: MlflowTracker, status: TrialStatus, tags: dict[str, str]) -> None:
        """Tag the trial's run with how it ended and close it (in the background)."""
        self._closing.append(self._writes.submit(_close_run, run, {"qsweep.status": status, **tags},
                                                 status.mlflow_status))

    def interrupt(self, runs: dict[str, MlflowTracker]) -> None:
        """Ctrl-C: mark the running trials' runs (by key) and the parent interrupted."""
        for key, run in runs.items():
            try:
                _close_run(run, {"qsweep.status": TrialStatus.INTERRUPTED},
                           TrialStatus.INTERRUPTED.mlflow_status)
            except Exception:  # noqa: BLE001 - stopping matters more than this record
                log.exception("could not mark %s interrupted", key)
        self.finish(TrialStatus.INTERRUPTED)

    def flush(self, opening: Iterable[futures.Future] = ()) -> None:
        """Wait for the writes still in the background (runs being closed, and ``opening``)."""
        for future in futures.as_completed([*self._closing, *opening]):
            if future.exception() is not None:
                log.error("an MLflow record failed: %s", future.exception())
        self._closing.clear()


def _close_run(run: MlflowTracker, tags: dict[str, str], status: str) -> None:
    run.set_tags(tags)
    run.finish(status)
