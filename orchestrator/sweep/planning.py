"""Planning: a sweep spec becomes its cells and trials — pure, deterministic, no side effects.

``load_plan(path)`` reads the spec, resolves its base trial config, and checks every grid
value, search range and objective against the trial schema; every problem is reported at
once with its key path (``grid.quant.type[1]``, ``search.space.train.learning_rate.low``)
before Ray, Optuna or MLflow are touched. A cell is identified by the content hash of its
resolved config (seed and searched keys left out), so each runs exactly once per seed, and a
sweep started again finds its cells by the same hashes. Example::

    qsweep plan sweeps/tiny-grid.yaml
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qsweep.orchestrator.sweep.spec import TRAIN_METRICS, SweepSpec
from qsweep.orchestrator.trial.config import TrialConfig
from qsweep.trainers.config_loading import apply_overrides, parse_overrides, read_yaml, validate
from qsweep.trainers.errors import ConfigError
from qsweep.trainers.hashing import json_sha256

PRESETS_DIR = Path(str(resources.files("qsweep.configs") / "trial"))
"""Trial config presets (``base: <name>``), package data of ``qsweep.configs``."""
SWEEPS_DIR = Path(str(resources.files("qsweep.sweeps")))
"""Shipped sweep specs (``qsweep run demo``), package data of ``qsweep.sweeps``."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its labels, its settings and its resolved config."""

    index: int
    labels: dict[str, str]
    """Axis name to the label of this cell's value (``{"quant.type": "nf4"}``)."""
    settings: dict[str, Any]
    """Dotted trial keys that the grid sets in this cell."""
    config: TrialConfig
    """The resolved config (first seed, searched keys at their base value)."""
    hash: str
    """Content hash of the config without train.seed and the searched keys."""

    @property
    def key(self) -> str:
        """Short identity used in study names, tags and directory names."""
        return self.hash[:12]

    def describe(self, axes: set[str] | None = None) -> str:
        """``axis=label`` of each grid axis (of ``axes`` only, when given: those that vary)."""
        shown = [f"{axis}={label}" for axis, label in self.labels.items() if axes is None or axis in axes]
        return " ".join(shown) or "(base)"


@dataclass(frozen=True)
class StudyPlan:
    """The trials of one (cell, seed): one Optuna study of ``n_trials`` trials."""

    sweep: str
    cell: Cell
    seed: int
    n_trials: int

    @property
    def name(self) -> str:
        """The Optuna study name, as optuna-dashboard lists it: the sweep, the cell's labels and the
        seed, then the cell's key (unique per sweep, cell and seed even where two sweeps of one
        name share a storage): ``demo · NF4+DQ · seed 0 · 3f2a1c9e0b7d``."""
        return " · ".join([self.sweep, *self.cell.labels.values(), f"seed {self.seed}", self.cell.key])

    @property
    def hashed_name(self) -> str:
        """The study name of sweeps created before names were readable (still found)."""
        return f"{self.sweep}/{self.cell.key}/seed{self.seed}"

    def trial_key(self, number: int) -> str:
        """A trial's identity across Optuna, MLflow (``qsweep.trial_key``) and its work directory."""
        return f"{self.cell.key}/seed{self.seed}/t{number}"

    @property
    def sampler_seed(self) -> int:
        """Seed of the study's sampler: from the sweep, the cell's labels and the seed — the same
        on every machine (the cell hash would change with, say, a model's local path)."""
        text = f"{self.sweep}/{self.cell.describe()}/seed{self.seed}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


@dataclass(frozen=True)
class Plan:
    """A validated sweep: the spec, its resolved base config, and its cells."""

    spec: SweepSpec
    source: str
    base: dict[str, Any] = field(repr=False)
    """The base trial config data with the spec's ``trial`` section merged in."""
    cells: list[Cell] = field(repr=False)

    def studies(self) -> list[StudyPlan]:
        """Every (cell, seed) in plan order: cells outer, seeds inner."""
        return [StudyPlan(self.spec.name, cell, seed, self.spec.trials_per_cell_seed)
                for cell in self.cells for seed in self.spec.seeds]

    @property
    def total_trials(self) -> int:
        return len(self.cells) * len(self.spec.seeds) * self.spec.trials_per_cell_seed

    def varying_axes(self) -> set[str]:
        """The grid axes with more than one value (those that tell cells apart)."""
        return {axis.name for axis in self.spec.axes() if len(axis.values) > 1}

    def run_name(self, planned: StudyPlan, number: int) -> str:
        """What the trial's MLflow run is called: the labels of the axes that vary, then the
        seed, then the trial number when a search runs several (``NF4+DQ · seed 0``)."""
        varying = self.varying_axes()
        parts = [label for axis, label in planned.cell.labels.items() if axis in varying] or ["base"]
        parts.append(f"seed {planned.seed}")
        if self.spec.trials_per_cell_seed > 1:
            parts.append(f"trial {number}")
        return " · ".join(parts)

    def trial_config(self, cell: Cell, seed: int, params: dict[str, Any] | None = None) -> TrialConfig:
        """The config of one trial: the cell's settings, the seed and the sampled params."""
        data = apply_overrides(self.base, {**cell.settings, "train.seed": seed, **(params or {})})
        return validate(data, TrialConfig, source=f"{self.source} (cell {cell.describe()})")

    def remote_code_keys(self) -> list[str]:
        """Where the spec turns ``model.trust_remote_code`` on, as key paths: such a sweep runs
        code from the model's repository in every trial, so the CLI asks for
        ``--trust-remote-code`` (:func:`check_remote_code`)."""
        key = "model.trust_remote_code"
        keys = []
        if _value_at(self.base, key) is True:
            keys.append(f"trial.{key}" if _has_path(self.spec.trial, key) else f"{self.spec.base}: {key}")
        for axis in self.spec.axes():
            for i, (label, settings) in enumerate(axis.values):
                if settings.get(key) is True:
                    where = f"[{i}]" if axis.name == key else f".{label}.{key}"
                    keys.append(f"grid.{axis.name}{where}")
        space = self.spec.search.space if self.spec.search else {}
        if key in space and True in getattr(space[key], "choices", []):
            keys.append(f"search.space.{key}")
        return keys

    def fingerprint(self) -> str:
        """Hash of what defines the sweep's trials: cells, seeds, search, objectives."""
        search = self.spec.search.model_dump(mode="json") if self.spec.search else None
        content = {"cells": [c.hash for c in self.cells], "seeds": self.spec.seeds, "search": search,
                   "objectives": [o.model_dump() for o in self.spec.objectives]}
        return json_sha256(content, compact=False)


def growth(old: Plan, new: Plan) -> str | None:
    """What ``new`` adds to the sweep ``old`` planned ("1 seed, 2 cells"), or None when it does
    more than add: a sweep grows by new seeds, new cells (grid values) and more search trials per
    cell and seed; any change to the cells it has (their settings, the base config), a removed
    seed or cell, another search space or other objectives make it another sweep."""
    old_cells, new_cells = {c.hash for c in old.cells}, {c.hash for c in new.cells}
    old_seeds, new_seeds = set(old.spec.seeds), set(new.spec.seeds)
    if not (old_cells <= new_cells and old_seeds <= new_seeds):
        return None
    if [o.model_dump() for o in old.spec.objectives] != [o.model_dump() for o in new.spec.objectives]:
        return None
    if (old.spec.search is None) != (new.spec.search is None):
        return None
    if old.spec.search is not None and new.spec.search is not None:
        before, after = old.spec.search.model_dump(mode="json"), new.spec.search.model_dump(mode="json")
        if before.pop("n_trials") > after.pop("n_trials") or before.pop("enqueue") != after.pop("enqueue") \
                or before != after:
            return None
    added = [(len(new_seeds - old_seeds), "seed", "seeds"), (len(new_cells - old_cells), "cell", "cells"),
             (new.spec.trials_per_cell_seed - old.spec.trials_per_cell_seed,
              "search trial per cell and seed", "search trials per cell and seed")]
    return ", ".join(f"{n} {one if n == 1 else many}" for n, one, many in added if n) or "nothing"


def resolve_spec_path(name: str | Path) -> Path:
    """A spec file path, or the name of a spec shipped in ``sweeps/`` (``demo``)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SWEEPS_DIR / f"{name}.yaml"
    if path.suffix == "" and shipped.is_file():
        return shipped
    if path.is_dir():
        raise ConfigError([("", f"sweep spec {str(name)!r} is a directory; give a YAML file")])
    known = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
    raise ConfigError([("", f"sweep spec {str(name)!r} does not exist (shipped specs: {known})")])


def _base_path(base: str, spec_path: Path) -> Path | None:
    preset = PRESETS_DIR / f"{base}.yaml"
    if "/" not in base and not base.endswith((".yaml", ".yml")) and preset.is_file():
        return preset
    path = Path(base).expanduser()
    path = path if path.is_absolute() else spec_path.parent / path
    return path if path.is_file() else None


def _merge_sections(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra``'s sections over ``base``'s, key by key; a key's value replaces the base's whole
    (``eval.task_limits: {}`` clears the base's limits rather than merging into them)."""
    merged = dict(base)
    for section, values in extra.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    try:
        validate(data, TrialConfig)
    except ConfigError as err:
        return err.problems
    return []


def _check_key(base: dict[str, Any], key: str, value: Any,
               alongside: dict[str, Any] | None = None) -> list[str]:
    """Messages about setting trial key ``key`` to ``value`` (empty: fine), together with the
    other settings of the same grid label (``alongside``: ``data.name`` with its ``data.path``)."""
    section, leaf = key.split(".")
    fields = TrialConfig.model_fields
    if section not in fields:
        return [f"no trial config section {section!r}; sections: {', '.join(fields)}"]
    known = fields[section].annotation.model_fields  # type: ignore[union-attr]
    if leaf not in known:
        return [f"section {section!r} has no key {leaf!r}; its keys: {', '.join(known)}"]
    settings = {**(alongside or {}), key: value}
    return [message for path, message in _problems(apply_overrides(base, settings)) if path == key]


def _objective_problems(spec: SweepSpec, cfg: TrialConfig) -> list[tuple[str, str]]:
    problems = []
    tasks = cfg.eval.tasks
    for i, objective in enumerate(spec.objectives):
        metric, where = objective.metric, f"objectives[{i}].metric"
        if metric in TRAIN_METRICS:
            continue
        if not metric.startswith("eval/"):
            problems.append((where, f"unknown metric {metric!r}; use an eval/<task>/... metric or one of "
                                    f"{', '.join(TRAIN_METRICS)}"))
        elif not tasks:
            problems.append((where, f"{metric!r} needs an evaluation, but eval.tasks is empty"))
        elif metric == "eval/perplexity":
            if not any("perplexity" in task for task in tasks):
                problems.append((where, f"eval/perplexity needs a perplexity task in eval.tasks {tasks}"))
        elif metric.split("/")[1] not in tasks:
            problems.append((where, f"{metric!r} is not measured: its task {metric.split('/')[1]!r} "
                                    f"is not in eval.tasks {tasks}"))
    return problems


def load_plan(spec_path: str | Path, overrides: list[str] | None = None) -> Plan:
    """Read, check and plan a sweep spec; ``overrides`` set spec keys (``seeds=[0]``,
    ``trial.train.max_steps=5``).

    Raises:
        ConfigError: every problem of the spec, with its key path; nothing has started.
    """
    path = resolve_spec_path(spec_path)
    source = str(path)
    parsed = parse_overrides(overrides or [])
    data = apply_overrides(read_yaml(path), parsed)
    data.setdefault("name", path.stem)
    try:
        spec = validate(data, SweepSpec, source=source, overridden=set(parsed))  # type: ignore[type-var]
    except ConfigError as err:
        raise ConfigError(err.problems + _problems_beyond(data, err.problems, path), source) from None
    return plan(spec, path)


def _check_size(spec: SweepSpec, source: str) -> None:
    """Refuse a spec that plans more than ``max_trials`` trials, before its grid is expanded."""
    cells = math.prod(len(axis.values) for axis in spec.axes())
    trials = cells * len(spec.seeds) * spec.trials_per_cell_seed
    if trials > spec.max_trials:
        key = "grid" if cells > spec.max_trials else "seeds" if spec.search is None else "search.n_trials"
        raise ConfigError([(key, f"{cells:,} cells x {len(spec.seeds)} seeds x {spec.trials_per_cell_seed} "
                                 f"trials = {trials:,} trials, more than max_trials ({spec.max_trials:,}); "
                                 "set max_trials higher if that is meant")], source)


def _problems_beyond(data: dict[str, Any], found: list[tuple[str, str]], path: Path) -> list[tuple[str, str]]:
    """The grid and trial problems of a spec whose own keys have problems too — so that one run
    reports everything: the faulty top-level keys are left out (at their defaults) to plan the rest."""
    faulty = {key.split(".")[0].split("[")[0] for key, _ in found}
    if not faulty or "name" in faulty:
        return []
    try:
        spec = SweepSpec.model_validate({k: v for k, v in data.items() if k not in faulty})
        plan(spec, path)
    except ConfigError as err:
        return [problem for problem in err.problems if problem not in found]
    except Exception:  # noqa: BLE001 - the keys at fault were reported already
        return []
    return []


def plan(spec: SweepSpec, spec_path: Path) -> Plan:
    """The cells and studies of a validated spec (see :func:`load_plan`)."""
    source = str(spec_path)
    _check_size(spec, source)
    problems: list[tuple[str, str]] = []
    base: dict[str, Any] = {}
    if spec.base is not None:
        base_path = _base_path(spec.base, spec_path)
        if base_path is None:
            presets = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
            raise ConfigError([("base", f"{spec.base!r} is neither a preset ({presets}) nor a file "
                                        f"relative to {spec_path.parent}")], source)
        base = read_yaml(base_path)
    merged = _merge_sections(base, spec.trial)
    searched = dict(spec.search.space) if spec.search else {}
    start = apply_overrides(merged, {"train.seed": spec.seeds[0]})

    for path, message in _problems(start):
        root = path.split(".")[0]
        where = f"trial.{path}" if _has_path(spec.trial, path) or root not in base else f"{spec.base}: {path}"
        problems.append((where, message))
    if problems:
        raise ConfigError(problems, source)

    axes = spec.axes()
    for axis in axes:
        for i, (label, settings) in enumerate(axis.values):
            for key, value in settings.items():
                where = f"grid.{axis.name}[{i}]" if key == axis.name else f"grid.{axis.name}.{label}.{key}"
                problems += [(where, message) for message in _check_key(start, key, value, settings)]
    for key, dist in searched.items():
        if dist.type == "categorical":
            samples = {f"choices[{i}]": value for i, value in enumerate(dist.choices)}
        else:
            samples = {"low": dist.low, "high": dist.high}
        for name, value in samples.items():
            problems += [(f"search.space.{key}.{name}", m) for m in _check_key(start, key, value)]
    if problems:
        raise ConfigError(problems, source)

    cells: list[Cell] = []
    seen: dict[str, Cell] = {}
    for index, combo in enumerate(itertools.product(*(axis.values for axis in axes))):
        labels = {axis.name: label for axis, (label, _) in zip(axes, combo, strict=True)}
        settings: dict[str, Any] = {}
        for _, values in combo:
            settings.update(values)
        data = apply_overrides(start, settings)
        found = _problems(data)
        if found:
            described = " ".join(f"{a}={v}" for a, v in labels.items())
            problems += [(f"grid (cell {described})", f"{p}: {m}") for p, m in found]
            continue
        cfg = validate(data, TrialConfig)
        cell = Cell(index, labels, settings, cfg, _cell_hash(cfg, searched))
        if cell.hash in seen:
            problems.append(("grid", f"cells {seen[cell.hash].describe()} and {cell.describe()} "
                                     "resolve to the same trial config"))
            continue
        seen[cell.hash] = cell
        cells.append(cell)
    if cells:
        problems += _objective_problems(spec, cells[0].config)
    if problems:
        raise ConfigError(problems, source)
    return Plan(spec, source, start, cells)


def check_remote_code(plan: Plan, allowed: bool) -> list[str]:
    """The keys that turn ``model.trust_remote_code`` on (see :meth:`Plan.remote_code_keys`).

    Raises:
        ConfigError: some do and ``allowed`` (``--trust-remote-code``) is not given.
    """
    keys = plan.remote_code_keys()
    if keys and not allowed:
        raise ConfigError([(key, "true runs code from the model's repository in every trial; pass "
                                 "--trust-remote-code to allow it") for key in keys], plan.source)
    return keys


_MISSING = object()


def _value_at(data: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key path of nested mappings, or ``_MISSING``."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _has_path(data: dict[str, Any], dotted: str) -> bool:
    return _value_at(data, dotted) is not _MISSING


def _cell_hash(cfg: TrialConfig, searched: dict[str, Any]) -> str:
    identity = cfg.identity()
    identity["train"].pop("seed")
    for key in searched:
        section, leaf = key.split(".")
        identity.get(section, {}).pop(leaf, None)
    return json_sha256(identity)
