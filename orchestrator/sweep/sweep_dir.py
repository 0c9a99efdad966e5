"""A sweep's directory: its spec snapshot, its identity, its Optuna database and trial work dirs.

Layout of ``<root>/sweeps/<name>/``::

    spec.yaml      the spec with its base config resolved: what ``qsweep resume`` plans from
    sweep.json     sweep id, plan fingerprint, MLflow parent run id, storage locations (redacted)
    optuna.db      the Optuna studies (unless storage.optuna names another database)
    driver.lock    held by the running driver: one driver per sweep
    trials/<cell>-seed<seed>-t<number>/   each trial's work directory (checkpoints, adapter, logs)
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from qsweep.orchestrator.sweep.planning import Plan, StudyPlan


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

    def load(self) -> SweepState:
        return SweepState(**json.loads(self.state_file.read_text()))

    def save(self, state: SweepState) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_suffix(".json.partial")
        partial.write_text(json.dumps(asdict(state), indent=1) + "\n")
        partial.replace(self.state_file)

    def create(self, plan: Plan) -> SweepState:
        """Write the spec snapshot and a new identity (first run of a sweep)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.spec_file.write_text(yaml.safe_dump(snapshot(plan), sort_keys=False))
        state = SweepState(name=plan.spec.name, sweep_id=uuid.uuid4().hex, fingerprint=plan.fingerprint(),
                           created=datetime.now(UTC).isoformat(timespec="seconds"), spec_source=plan.source)
        self.save(state)
        return state


    def grow(self, state: SweepState, plan: Plan) -> None:
        """Take ``plan``, which extends the sweep's (``planning.growth``): its spec snapshot, then
        its fingerprint (last, so that a crash in between leaves a sweep that grows again)."""
        self.spec_file.write_text(yaml.safe_dump(snapshot(plan), sort_keys=False))
        state.fingerprint, state.spec_source = plan.fingerprint(), plan.source
        self.save(state)


def snapshot(plan: Plan) -> dict:
    """The spec as self-contained data: the base config merged into ``trial``."""
    data = plan.spec.model_dump(mode="json")
    data["base"] = None
    data["trial"] = plan.base
    return data
