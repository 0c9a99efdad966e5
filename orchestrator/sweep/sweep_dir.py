"""A sweep's directory: its spec snapshot, its identity, its Optuna database and trial work dirs.

Layout of ``<root>/sweeps/<name>/``::

    spec.yaml      the spec with its base config resolved: what ``qsweep resume`` plans from
    sweep.json     sweep id, plan fingerprint, MLflow parent run id, storage locations (redacted)
    optuna.db      the Optuna studies (unless storage.optuna names another database)
    driver.lock    held by the running driver: one driver per sweep
    trials/<cell>-seed<seed>-t<number>/   each trial's work directory (checkpoints, adapter, logs)
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from qsweep.orchestrator.adapters.credentials import mask_password
from qsweep.orchestrator.sweep.planning import Plan, StudyPlan, load_plan
from qsweep.trainers.errors import ConfigError


@dataclass
class SweepState:
    """``sweep.json``: what identifies a sweep across drivers and machines."""

    name: str
    sweep_id: str
    fingerprint: str
    created: str
    spec_source: str
    parent_run_id: str | None = None
    optuna: str = ""
    """The Optuna storage, credentials masked (for display)."""
    tracking: str = ""
    """The MLflow tracking URI, credentials masked (for display)."""


class SweepDir:
    """Paths and state files of one sweep."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def of(cls, root: Path, name: str) -> SweepDir:
        return cls(Path(root) / "sweeps" / name)

    @property
    def spec_file(self) -> Path:
        return self.path / "spec.yaml"

    @property
    def state_file(self) -> Path:
        return self.path / "sweep.json"

    @property
    def lock_file(self) -> Path:
        return self.path / "driver.lock"

    @property
    def optuna_file(self) -> Path:
        return self.path / "optuna.db"

    def exists(self) -> bool:
        return self.state_file.is_file()

    def trial_dir(self, planned: StudyPlan, number: int) -> Path:
        return self.path / "trials" / f"{planned.cell.key}-seed{planned.seed}-t{number}"

    def snapshot_plan(self) -> Plan:
        """The plan of the sweep's own spec snapshot; a snapshot that no longer reads as a spec
        (edited or damaged here) is said to be that, not a mistake in the user's spec.

        Raises:
            ConfigError: naming the snapshot and what to do.
        """
        try:
            return load_plan(self.spec_file)
        except ConfigError as err:
            problems = "; ".join(f"{key}: {message}" if key else message for key, message in err.problems)
            raise ConfigError([("", f"the sweep directory's spec snapshot {self.spec_file} is damaged "
                                    f"({problems}); restore it, or run the sweep's spec again with "
                                    "`qsweep run SPEC` (it resumes the sweep)")]) from None

    def load(self) -> SweepState:
        return SweepState(**json.loads(self.state_file.read_text()))

    def save(self, state: SweepState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_private(self.state_file, json.dumps(asdict(state), indent=1) + "\n")

    def create(self, plan: Plan) -> SweepState:
        """Write the spec snapshot and a new identity (first run of a sweep)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_private(self.spec_file, yaml.safe_dump(snapshot(plan), sort_keys=False))
        state = SweepState(name=plan.spec.name, sweep_id=uuid.uuid4().hex, fingerprint=plan.fingerprint(),
                           created=datetime.now(UTC).isoformat(timespec="seconds"), spec_source=plan.source)
        self.save(state)
        return state


    def grow(self, state: SweepState, plan: Plan) -> None:
        """Take ``plan``, which extends the sweep's (``planning.growth``): its spec snapshot, then
        its fingerprint (last, so that a crash in between leaves a sweep that grows again)."""
        write_private(self.spec_file, yaml.safe_dump(snapshot(plan), sort_keys=False))
        state.fingerprint, state.spec_source = plan.fingerprint(), plan.source
        self.save(state)


def snapshot(plan: Plan) -> dict:
    """The spec as self-contained data: the base config merged into ``trial``; the passwords of
    its storage URLs masked (``adapters.credentials``: resume takes them from the environment)."""
    data = plan.spec.model_dump(mode="json")
    data["base"] = None
    data["trial"] = copy.deepcopy(plan.base)
    storage = data["storage"]
    for key in ("optuna", "tracking"):
        storage[key] = mask_password(storage[key])
    tracking = data["trial"].get("tracking")
    if isinstance(tracking, dict) and tracking.get("uri"):
        tracking["uri"] = mask_password(tracking["uri"])
    return data


def write_private(path: Path, text: str) -> None:
    """Write ``path`` whole (through a partial file and a rename), readable by its owner only:
    the sweep's files name its stores (their passwords masked, their users and hosts not)."""
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(partial, 0o600)  # a partial file left by an older qsweep keeps its mode otherwise
    partial.replace(path)
