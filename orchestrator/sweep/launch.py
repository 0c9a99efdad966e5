"""Everything a sweep needs before its first trial, checked in order of cost.

:func:`prepare_sweep` checks (without starting anything) that the sweep directory, if it
exists, holds this same plan, that the Optuna storage and the MLflow tracking store answer,
and that lm-eval knows every evaluation task — then creates the sweep directory.
:meth:`PreparedSweep.connect` starts or joins Ray and returns a driver that has found its
parent run and whatever earlier drivers left behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsweep.orchestrator.sweep.planning import Plan, growth
from qsweep.orchestrator.sweep.sweep_dir import SweepDir, SweepState
from qsweep.trainers.errors import ConfigError
from qsweep.trainers.status import TrialStatus

OFFLINE_TASKS_HINT = "Offline alternatives: eval.tasks=[mmlu_offline,perplexity_offline]."


@dataclass
class PreparedSweep:
    plan: Plan
    directory: SweepDir
    state: SweepState
    optuna_url: str
    tracking_uri: str
    experiment: str
    grown: str | None = None
    """What this spec added to an existing sweep (``planning.growth``), when it did."""
    placement: str = ""
    _store: Any = None
    _cluster: Any = None

    def connect(self, address: str | None, num_gpus: int | None, num_cpus: int | None,
                concurrency: int | None, trial_fn: Callable[..., Any], retry_failed: bool = False) -> Any:
        """Start or join Ray, open the studies, find the parent run and earlier work (failed
        trials to run again with ``retry_failed``)."""
        from qsweep.orchestrator.adapters import leftovers
        from qsweep.orchestrator.adapters.cluster import Cluster
        from qsweep.orchestrator.adapters.search import StudyStore
        from qsweep.orchestrator.sweep.driver import SweepDriver
        from qsweep.orchestrator.sweep.ledger import RunLedger

        spec = self.plan.spec
        self._cluster = Cluster(address, num_gpus, num_cpus)
        local = not self._cluster.address
        if local:  # what a killed driver of this sweep left running, stopped first
            leftovers.stop(self.local_cluster_file)
        capacity = self._cluster.connect()
        if local:
            leftovers.record(self.local_cluster_file)
        resources = trial_resources(spec.resources, capacity)
        fits = [capacity.cpus / resources.cpus]
        if resources.gpus > 0:
            fits.append(capacity.gpus / resources.gpus)
        wanted = concurrency or spec.concurrency
        if wanted is None:
            limit = max(1, int(min(fits)))
        elif resources.overlap:  # each computing trial has its successor preparing beside it
            limit = max(1, min(2 * wanted, int(fits[0])))
        else:
            limit = wanted
        turns = ""
        if resources.overlap:
            turns = ", 2 trials taking turns on each GPU" + (", loading ahead" * resources.load_ahead)
        self.placement = (f"{capacity.gpus:g} GPUs, {capacity.cpus:g} CPUs ({resources.gpus:g} GPU and "
                          f"{resources.cpus:g} CPUs per trial{turns})" if resources.gpus else
                          f"{capacity.cpus:g} CPUs ({resources.cpus:g} per trial; no GPU in the cluster: "
                          "trials run on CPU)")
        self._store = StudyStore(self.optuna_url, spec)
        ledger = RunLedger(self.tracking_uri, self.experiment, self.plan, self.directory, self.state)
        driver = SweepDriver(self.plan, self.directory, self._store, ledger, self._cluster, concurrency=limit,
                             resources=resources, trial_fn=trial_fn)
        driver.recover(retry_failed)
        return driver

    def status_rows(self) -> list[dict[str, Any]]:
        from qsweep.orchestrator.adapters.search import StudyStore

        store = self._store or StudyStore(self.optuna_url, self.plan.spec)
        return status_rows(self.plan, store)

    @property
    def local_cluster_file(self) -> Path:
        """The processes of the local Ray cluster this sweep's driver started (``adapters.leftovers``)."""
        return self.directory.path / "local_cluster.json"

    def close(self) -> None:
        if self._cluster is not None and not self._cluster.address:
            self._cluster.shutdown()
            self.local_cluster_file.unlink(missing_ok=True)


def trial_resources(requested: Any, capacity: Any) -> Any:
    """GPUs and CPUs each trial asks for: the spec's ``resources`` on this cluster.

    No GPU on a cluster without; half a GPU for trials of one GPU that take turns on it
    (``overlap``); ``cpus: auto`` resolved to the CPUs per GPU of the GPU nodes times the GPUs
    asked for (whole cores, at least 1; 1 on a cluster without GPUs).
    """
    import math

    from qsweep.orchestrator.adapters.cluster import TrialResources

    gpus = requested.gpus if capacity.gpus > 0 else 0.0
    overlap = requested.overlap and gpus == 1
    if overlap:
        gpus = 0.5
    cpus = requested.cpus
    if cpus == "auto":
        cpus = max(1.0, math.floor(capacity.cpus_per_gpu * gpus)) if gpus > 0 else 1.0
    return TrialResources(gpus=gpus, cpus=float(cpus), overlap=overlap,
                          load_ahead=overlap and requested.load_ahead)


def resolve_storage(plan: Plan, directory: SweepDir, root: Path) -> tuple[str, str, str]:
    """(Optuna URL, MLflow tracking URI, MLflow experiment) of a sweep."""
    from qsweep.orchestrator.adapters.credentials import with_password
    from qsweep.orchestrator.adapters.search import sqlite_url
    from qsweep.orchestrator.adapters.tracking import resolve_uri

    spec, base = plan.spec, plan.cells[0].config
    optuna_url = spec.storage.optuna or sqlite_url(directory.optuna_file.resolve())
    tracking = resolve_uri(spec.storage.tracking or base.tracking.uri, root)
    tracking_key = "storage.tracking" if spec.storage.tracking else "trial.tracking.uri"
    return (with_password(optuna_url, "storage.optuna", plan.source),
            with_password(tracking, tracking_key, plan.source),
            spec.storage.experiment or base.tracking.experiment)


def prepare_sweep(plan: Plan, root: Path) -> PreparedSweep:
    """Check everything cheap, then create (or reopen) the sweep directory."""
    from qsweep.evaluation.harness import check_tasks
    from qsweep.orchestrator.adapters.search import check_storage
    from qsweep.orchestrator.adapters.tracking import check_reachable, redact
    from qsweep.trainers import hub

    directory = SweepDir.of(root, plan.spec.name)
    existing = directory.load() if directory.exists() else None
    grown = None
    if existing is not None and existing.fingerprint != plan.fingerprint():
        grown = growth(directory.snapshot_plan(), plan)
        if grown is None:
            raise ConfigError([("", f"sweep {plan.spec.name!r} exists in {directory.path} with a different "
                                    "plan: a sweep grows by more seeds, grid values or search trials, but "
                                    "this spec changes cells it has (their settings or the base config), "
                                    "removes some, or changes the search or the objectives; give this spec "
                                    "another name, or remove that directory to start over")], plan.source)
    optuna_url, tracking, experiment = resolve_storage(plan, directory, root)
    check_storage(optuna_url)
    check_reachable(tracking, "storage.tracking", plan.source)
    evaluations = {cell.config.eval.model_dump_json(): cell.config.eval for cell in plan.cells}
    for evaluation in evaluations.values():
        if evaluation.tasks:
            check_tasks(evaluation)
        if evaluation.needs_hub:
            hub.require_hub(f"the data of lm-eval tasks {', '.join(evaluation.needs_hub)}",
                            offline_hint=OFFLINE_TASKS_HINT)
    state = existing or directory.create(plan)
    if existing is not None and grown is not None:
        directory.grow(state, plan)
    state.optuna, state.tracking = redact(optuna_url), redact(tracking)
    directory.save(state)
    return PreparedSweep(plan, directory, state, optuna_url, tracking, experiment, grown=grown)


def status_rows(plan: Plan, store: Any) -> list[dict[str, Any]]:
    """One row per planned trial slot: cell, seed, number, state, objectives, duration, run id."""
    from qsweep.orchestrator.adapters.search import live_trials

    rows = []
    varying = plan.varying_axes()
    existing = store.existing_study_names()
    for planned in plan.studies():
        records = [r for r in live_trials(store.trials(planned) if store.has_study(planned, existing) else [])
                   if r.state != "WAITING"]  # queued parameters not asked yet: still pending
        for record in records:
            status = record.outcome.get("status") or TrialStatus.of_optuna_state(record.state)
            rows.append({"cell": planned.cell.describe(varying), "seed": planned.seed, "trial": record.number,
                         "status": status, "values": record.values, "params": record.params,
                         "seconds": record.outcome.get("seconds", record.duration_s),
                         "run_id": record.attrs.get("run_id"), "reason": record.outcome.get("reason", ""),
                         "phases": record.outcome.get("phases") or {}})
        for number in range(len(records), planned.n_trials):
            rows.append({"cell": planned.cell.describe(varying), "seed": planned.seed, "trial": number,
                         "status": "pending", "values": None, "params": {}, "seconds": None,
                         "run_id": None, "reason": "", "phases": {}})
    return rows
