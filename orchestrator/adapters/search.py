"""Optuna: the one module of qsweep that imports optuna.

Each (cell, seed) of a sweep is one Optuna study (``<sweep>/<cell>/seed<seed>``) in a
persistent storage — SQLite in the sweep directory by default, PostgreSQL or MySQL on a
cluster — so optuna-dashboard can browse every study, and a driver that starts again finds
each trial where the last one left it. The driver asks and tells (no Ray Tune wrapper):
``ask`` samples a trial's parameters, ``tell`` records its objective values or its fate
(pruned, failed). Intermediate values reach the pruner through :meth:`StudyStore.report`.

Only Optuna's public API is used: studies ask and tell by trial number; a trial asked by an
earlier driver is written through the storage's documented interface (``BaseStorage``: user
attributes, intermediate values) and judged by the study's pruner (``BasePruner.prune``), as
``Trial.report`` and ``Trial.should_prune`` do. Supported: the ``optuna`` range in
pyproject.toml, whose lower bound tests/orchestrator/test_optuna_range.py runs against.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from qsweep.orchestrator.adapters.storage_faults import check_sqlite
from qsweep.orchestrator.sweep.planning import StudyPlan
from qsweep.orchestrator.sweep.spec import (
    Categorical,
    FloatRange,
    IntRange,
    PrunerSpec,
    SearchSpec,
    SweepSpec,
)
from qsweep.trainers.errors import StorageUnavailable

log = logging.getLogger("qsweep")
# Optuna sets its own logger to INFO when imported (a line per study loaded or trial told);
# qsweep reports what matters itself.
optuna.logging.set_verbosity(optuna.logging.WARNING)

DONE_STATES = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class TrialRecord:
    """What the storage knows of one trial."""

    study: str
    number: int
    state: str
    """RUNNING, COMPLETE, PRUNED or FAIL (Optuna's states)."""
    params: dict[str, Any]
    """The sampled values, decoded (dotted trial keys)."""
    values: list[float] | None
    attrs: dict[str, Any]
    """qsweep's records: ``run_id``, ``adjust`` and ``oom_retries`` (OOM retries), ``outcome``."""
    duration_s: float | None

    @property
    def outcome(self) -> dict[str, Any]:
        """How the trial ended, as the driver recorded it: status, reason, seconds, host."""
        return self.attrs.get("outcome") or {}

    @property
    def slot(self) -> int:
        """The trial number whose place this trial takes: its own, or for a retry of a failed
        trial (``qsweep resume --retry-failed``) the failed one's — the key, work directory and
        MLflow run it continues."""
        return int(self.attrs.get("retry_of", self.number))


def live_trials(records: list[TrialRecord]) -> list[TrialRecord]:
    """``records`` without the failed trials a retry took the place of (Optuna keeps a finished
    trial as it ended; its retry is a new trial of the same parameters)."""
    retried = {int(r.attrs["retry_of"]) for r in records if "retry_of" in r.attrs}
    return [r for r in records if r.number not in retried or "retry_of" in r.attrs]


def _encode(value: Any) -> Any:
    # Optuna's categorical choices must be None, bool, int, float or str.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return "json:" + json.dumps(value, sort_keys=True)


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[len("json:"):])
    return value


def distribution(dist: IntRange | FloatRange | Categorical) -> Any:
    """The Optuna distribution of a search axis."""
    if isinstance(dist, IntRange):
        return IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    if isinstance(dist, FloatRange):
        return FloatDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
    return CategoricalDistribution([_encode(c) for c in dist.choices])


def _grid_sampler(search: SearchSpec, seed: int) -> Any:
    grid = {key: [_encode(c) for c in dist.choices] for key, dist in search.space.items()}  # type: ignore[union-attr]
    return optuna.samplers.GridSampler(grid, seed=seed)


SAMPLER_BUILDERS: dict[str, Callable[[SearchSpec, int], Any]] = {
    # constant_liar: concurrent trials of a study are spread instead of sampled alike.
    "tpe": lambda search, seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True),
    "random": lambda search, seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda search, seed: optuna.samplers.CmaEsSampler(seed=seed),
    "grid": _grid_sampler,
    "nsga2": lambda search, seed: optuna.samplers.NSGAIISampler(seed=seed),
}
"""Optuna's sampler for each name of ``qsweep.orchestrator.sweep.spec.SAMPLERS``."""

PRUNER_BUILDERS: dict[str, Callable[[PrunerSpec, int], Any]] = {
    "median": lambda config, max_steps: optuna.pruners.MedianPruner(
        n_startup_trials=config.n_startup_trials, n_warmup_steps=config.n_warmup_steps),
    "hyperband": lambda config, max_steps: optuna.pruners.HyperbandPruner(
        min_resource=config.report_every, max_resource=max_steps, reduction_factor=config.reduction_factor),
}
"""Optuna's pruner for each name of ``qsweep.orchestrator.sweep.spec.PRUNERS``."""


def sampler(spec: SweepSpec, seed: int) -> Any:
    """The sampler of ``spec.search`` (seeded: the same on every restart)."""
    search = spec.search
    if search is None:
        return optuna.samplers.RandomSampler(seed=seed)  # nothing to sample
    return SAMPLER_BUILDERS[search.sampler](search, seed)


def pruner(spec: SweepSpec, max_steps: int) -> Any:
    """The pruner of ``spec.search`` (none without one)."""
    config = spec.search.pruner if spec.search else None
    if config is None:
        return optuna.pruners.NopPruner()
    return PRUNER_BUILDERS[config.type](config, max_steps)


def sqlite_url(path: Any) -> str:
    return f"sqlite:///{path}"


class StudyStore:
    """The Optuna studies of one sweep in one storage."""

    def __init__(self, url: str, spec: SweepSpec):
        self.url = url
        self.spec = spec
        self.storage = optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url))
        if url.startswith("sqlite"):
            _write_ahead_log(self.storage.engine)
        self._studies: dict[str, optuna.Study] = {}
        self._existing_names: set[str] | None = None
        self._trial_ids: dict[tuple[str, int], int] = {}
        """The storage's trial id by (study, trial number): one lookup per trial, not per write."""
        self._space = ({key: distribution(d) for key, d in spec.search.space.items()}
                       if spec.search else {})

    def study(self, planned: StudyPlan) -> optuna.Study:
        """The study of a (cell, seed), created on first use (under its readable name; a sweep
        created before those keeps its studies' hashed names)."""
        name = planned.name
        if name not in self._studies:
            stored = planned.hashed_name if planned.hashed_name in self._existing() else name
            study = optuna.create_study(
                study_name=stored, storage=self.storage, load_if_exists=True,
                directions=self.spec.directions, sampler=sampler(self.spec, planned.sampler_seed),
                pruner=pruner(self.spec, planned.cell.config.train.max_steps))
            if "cell" not in study.user_attrs:
                # First creation: queue the spec's starting points before anything is asked.
                for params in self.spec.search.enqueue if self.spec.search else []:
                    study.enqueue_trial({k: _encode(v) for k, v in params.items()})
                study.set_user_attr("sweep", planned.sweep)
                study.set_user_attr("cell", planned.cell.key)
                study.set_user_attr("cell_labels", planned.cell.labels)
                study.set_user_attr("seed", planned.seed)
                study.set_user_attr("settings", {k: _encode(v) for k, v in planned.cell.settings.items()})
                study.set_user_attr("metrics", [o.metric for o in self.spec.objectives])
                with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names([o.metric for o in self.spec.objectives])  # not "Objective 0"
            self._studies[name] = study
        return self._studies[name]

    def _existing(self) -> set[str]:
        if self._existing_names is None:
            self._existing_names = self.existing_study_names()
        return self._existing_names

    def existing_study_names(self) -> set[str]:
        return {s.study_name for s in optuna.get_all_study_summaries(self.storage, include_best_trial=False)}

    def has_study(self, planned: StudyPlan, names: set[str] | None = None) -> bool:
        """Whether the (cell, seed)'s study exists (under either name), among ``names`` when given
        (:meth:`existing_study_names`, read once for many studies)."""
        names = self.existing_study_names() if names is None else names
        return planned.name in names or planned.hashed_name in names

    def trials(self, planned: StudyPlan) -> list[TrialRecord]:
        """Every trial of a (cell, seed) so far, in number order."""
        return [_record(planned.name, frozen) for frozen in self.study(planned).get_trials(deepcopy=False)]

    def ask(self, planned: StudyPlan) -> TrialRecord:
        """A new trial of the study with freshly sampled parameters (state RUNNING)."""
        trial = self.study(planned).ask(self._space)
        # what the trial is, for optuna-dashboard (a grid sweep's trials have no searched params)
        for axis, label in planned.cell.labels.items():
            trial.set_user_attr(f"axis.{axis}", label)
        trial.set_user_attr("seed", planned.seed)
        return TrialRecord(study=planned.name, number=trial.number, state="RUNNING",
                           params={k: _decode(v) for k, v in trial.params.items()}, values=None,
                           attrs=dict(trial.user_attrs), duration_s=None)

    def ask_again(self, planned: StudyPlan, failed: TrialRecord) -> list[TrialRecord]:
        """A new trial in the place of ``failed``, with its parameters: Optuna hands out queued
        parameters in order, so trials queued before it (the spec's ``search.enqueue`` points
        not asked yet) come first; returned too, the retry last."""
        study = self.study(planned)
        study.enqueue_trial({k: _encode(v) for k, v in failed.params.items()},
                            user_attrs={"retry_of": failed.slot, "run_id": failed.attrs.get("run_id")})
        asked = [self.ask(planned)]
        while "retry_of" not in asked[-1].attrs:
            asked.append(self.ask(planned))
        return asked

    def _trial_id(self, planned: StudyPlan, number: int) -> int:
        key = (planned.name, number)
        if key not in self._trial_ids:
            study_id = self.storage.get_study_id_from_name(self.study(planned).study_name)
            self._trial_ids[key] = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return self._trial_ids[key]

    def set_attrs(self, planned: StudyPlan, number: int, attrs: dict[str, Any]) -> None:
        """Set user attributes of a running trial (asked by this driver or an earlier one)."""
        trial_id = self._trial_id(planned, number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def tell(self, planned: StudyPlan, number: int, state: str, values: list[float] | None = None) -> None:
        """Record how a trial ended: COMPLETE with its values, PRUNED or FAIL."""
        study = self.study(planned)
        self._trial_ids.pop((planned.name, number), None)
        if state == "COMPLETE":
            study.tell(number, values=values, skip_if_finished=True)
        else:
            study.tell(number, state=TrialState[state], skip_if_finished=True)

    def report(self, planned: StudyPlan, number: int, step: int, value: float) -> bool:
        """Record an intermediate value; True when the pruner says to stop the trial."""
        trial_id, study = self._trial_id(planned, number), self.study(planned)
        self.storage.set_trial_intermediate_value(trial_id, step, float(value))
        return bool(study.pruner.prune(study, self.storage.get_trial(trial_id)))


def _record(study: str, trial: optuna.trial.FrozenTrial) -> TrialRecord:
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialRecord(study=study, number=trial.number, state=trial.state.name,
                       params={k: _decode(v) for k, v in trial.params.items()},
                       values=list(trial.values) if trial.values is not None else None,
                       attrs=dict(trial.user_attrs), duration_s=duration)


def _write_ahead_log(engine: Any) -> None:
    """SQLite in WAL mode with normal syncing: a commit costs a write, not an fsync — ask and
    tell write several rows per trial — and readers (``qsweep status``) never block the driver.
    A crashed driver loses no committed transaction; only a power cut could lose the last."""
    import sqlalchemy

    def configure(connection: Any, _: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", configure)
    engine.dispose()  # connections opened before the listener reconnect with it


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # One driver writes; a generous timeout rides out a concurrent `qsweep status` read.
        return {"connect_args": {"timeout": 60}}
    return {"pool_pre_ping": True}


def check_storage(url: str) -> None:
    """Fail fast if the Optuna storage cannot be reached, or (SQLite) is damaged or locked,
    before any trial starts."""
    import sqlalchemy

    if url.startswith("sqlite:///"):
        check_sqlite(Path(url[len("sqlite:///"):]), "the Optuna database")
        return
    try:
        engine = sqlalchemy.create_engine(url, **_engine_kwargs(url))
        with engine.connect():
            pass
    except Exception as err:  # noqa: BLE001 - any failure means "unusable storage"
        from qsweep.orchestrator.adapters.tracking import redact, scrub

        detail = scrub(str(err).splitlines()[0][:200], url)
        raise StorageUnavailable(f"cannot use the Optuna storage {redact(url)}: "
                                 f"{type(err).__name__}: {detail}") from None
