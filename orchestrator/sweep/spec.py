"""A sweep spec: a base trial config, the grid of ablation cells, seeds, and an Optuna search.

Sweep specs are YAML files under ``sweeps/``. Example (``sweeps/tiny-grid.yaml`` shape)::

    name: nf4-vs-fp4
    base: smollm2-offline            # a preset in configs/trial, or a path relative to this file
    trial:                           # merged over the base config, key by key
      train: {max_steps: 20}
    grid:                            # full factorial; every cell runs exactly once per seed
      quant.type: [nf4, fp4]
      quant.double_quant: [true, false]
    seeds: [0, 1, 2]
    search:                          # tuned inside every (cell, seed); optional
      n_trials: 8
      sampler: tpe
      pruner: {type: median, report_every: 5}
      space:
        train.learning_rate: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    objectives:
      - {metric: eval/mmlu_offline/acc, direction: maximize}

Load with :func:`qsweep.orchestrator.sweep.planning.load_spec`, which also checks every grid value and
search range against the trial schema; every problem is reported with its key path
(``grid.quant.type[1]``) before Ray, Optuna or MLflow are touched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from qsweep.orchestrator.report.layouts import PRESETS, Layout, layout_from
from qsweep.orchestrator.trial.config import TRACKING_SCHEMES, check_url
from qsweep.trainers.config import ConfigProblems, ConfigSection
from qsweep.trainers.config_loading import describe

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME_LENGTH = 100
_DOTTED = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")

TRAIN_METRICS = {
    "train/final_loss": "minimize",
    "train/mean_tokens_per_s": "maximize",
    "train/peak_memory_bytes": "minimize",
    "model/base_weight_bytes": "minimize",
    "model/quantized_bytes": "minimize",
    "model/trainable_params": "minimize",
}
"""Metrics every trained trial reports besides its ``eval/...`` ones (usual direction)."""


class IntRange(ConfigSection):
    """An integer axis: ``{type: int, low: 8, high: 64, step: 8}``."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(self.low, self.high, self.log)
        return self


class FloatRange(ConfigSection):
    """A real axis: ``{type: float, low: 1e-5, high: 1e-3, log: true}``."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(self.low, self.high, self.log)
        if self.log and self.step is not None:
            raise ConfigProblems([("step", "cannot be combined with log: true")])
        return self


class Categorical(ConfigSection):
    """A categorical axis: ``{type: categorical, choices: [0.0, 0.05, 0.1]}``."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1)


def _check_range(low: float, high: float, log: bool) -> None:
    problems = []
    if not math.isfinite(low) or not math.isfinite(high):
        problems.append(("low", "low and high must be finite"))
    elif low > high:
        problems.append(("high", f"must be >= low ({low}), got {high}"))
    if log and low <= 0:
        problems.append(("low", f"must be > 0 with log: true, got {low}"))
    if problems:
        raise ConfigProblems(problems)


@dataclass(frozen=True)
class GridAxis:
    """One ablation factor: its name and its values as (label, {dotted key: value})."""

    name: str
    values: tuple[tuple[str, dict[str, Any]], ...]


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _named_axis_problems(axis: str, values: Any) -> list[tuple[str, str]]:
    if not isinstance(values, dict) or not values:
        return [(axis, "a named axis maps each label to its settings, e.g. "
                       "{NF4: {quant.type: nf4}, FP4: {quant.type: fp4}}")]
    problems = []
    for label, settings in values.items():
        if not isinstance(settings, dict) or not settings:
            problems.append((f"{axis}.{label}", "must map dotted trial keys to values"))
            continue
        bad = [k for k in settings if not isinstance(k, str) or not _DOTTED.match(k)]
        if bad:
            problems.append((f"{axis}.{label}", f"keys must be dotted trial keys, got {bad}"))
    return problems


Distribution = IntRange | FloatRange | Categorical
DISTRIBUTIONS: dict[str, type[IntRange | FloatRange | Categorical]] = {
    "int": IntRange, "float": FloatRange, "categorical": Categorical}


@dataclass(frozen=True)
class SamplerKind:
    """What a sweep spec may ask of an Optuna sampler (``qsweep.orchestrator.adapters.search`` builds it)."""

    axes: Literal["any", "int/float", "categorical"] = "any"
    """The search axes it samples."""
    multi_objective: bool = True
    """It handles several objectives."""


SAMPLERS: dict[str, SamplerKind] = {
    "tpe": SamplerKind(),
    "random": SamplerKind(),
    "cmaes": SamplerKind(axes="int/float", multi_objective=False),
    "grid": SamplerKind(axes="categorical", multi_objective=False),
    "nsga2": SamplerKind(),
}
"""The samplers a spec may name: the one registry that the schema and the Optuna adapter read."""
PRUNERS = ("median", "hyperband")
"""The pruners a spec may name (``qsweep.orchestrator.adapters.search`` builds them)."""
SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]
PrunerName = Literal[PRUNERS]  # type: ignore[valid-type]


class PrunerSpec(ConfigSection):
    """Stops unpromising trials early from intermediate evaluations during training."""

    type: PrunerName
    """median: below the median of earlier trials at the same step; hyperband: successive halving."""
    report_every: int = Field(gt=0)
    """Training steps between intermediate evaluations (each is reported to the pruner)."""
    n_startup_trials: int = Field(2, ge=0)
    """median: trials that finish before any is pruned."""
    n_warmup_steps: int = Field(0, ge=0)
    """median: steps of each trial before it may be pruned."""
    reduction_factor: int = Field(3, ge=2)
    """hyperband: the fraction 1/reduction_factor of trials is promoted at each rung."""


class SearchSpec(ConfigSection):
    """Optuna's search inside every (cell, seed): which axes, how many trials, which strategy."""

    space: dict[str, Distribution] = Field(min_length=1)
    """Dotted trial keys to distributions (int, float, categorical)."""
    n_trials: int = Field(gt=0)
    """Trials per (cell, seed)."""
    sampler: SamplerName = "tpe"
    """tpe, random, cmaes (int/float axes), grid (categorical axes), nsga2 (several objectives)."""
    pruner: PrunerSpec | None = None
    """Early stopping from intermediate evaluations (single objective only)."""
    enqueue: list[dict[str, Any]] = []
    """Parameter sets tried first, in order (known-good settings, a baseline); the sampler
    takes over after them. They count towards n_trials."""

    @field_validator("space", mode="before")
    @classmethod
    def _parse_space(cls, space: Any) -> Any:
        # By hand rather than as a tagged union, so that problems read search.space.<key>.high
        # (pydantic would put the tag in the path: <key>.float.high).
        if not isinstance(space, dict):
            return space
        parsed, problems = {}, []
        for key, value in space.items():
            if not _DOTTED.match(str(key)):
                problems.append((str(key), "must be a dotted trial key such as train.learning_rate"))
                continue
            kind = value.get("type") if isinstance(value, dict) else None
            model = DISTRIBUTIONS.get(kind)  # type: ignore[arg-type]
            if model is None:
                problems.append((f"{key}.type", f"must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}"))
                continue
            try:
                parsed[key] = model.model_validate(value)
            except ValidationError as err:
                problems += [(f"{key}.{path}", message) for path, message in describe(err, model, set())]
        if problems:
            raise ConfigProblems(problems)
        return parsed

    @model_validator(mode="after")
    def _check_sampler(self) -> SearchSpec:
        problems = []
        kinds = {key: dist.type for key, dist in self.space.items()}
        axes = SAMPLERS[self.sampler].axes
        if axes == "categorical":
            numeric = [k for k, kind in kinds.items() if kind != "categorical"]
            if numeric:
                problems.append(("sampler", f"{self.sampler} needs categorical axes; {', '.join(numeric)} "
                                            "are ranges (list their values with type: categorical)"))
            elif self.sampler == "grid":
                size = math.prod(len(d.choices) for d in self.space.values())  # type: ignore[union-attr]
                if self.n_trials > size:
                    problems.append(("n_trials", f"the grid sampler has {size} points, "
                                                 f"got n_trials {self.n_trials}"))
        if axes == "int/float":
            categorical = [k for k, kind in kinds.items() if kind == "categorical"]
            if categorical:
                problems.append(("sampler", f"{self.sampler} samples int/float axes only; "
                                            f"{', '.join(categorical)} is categorical (use tpe)"))
        if len(self.enqueue) > self.n_trials:
            problems.append(("enqueue", f"lists {len(self.enqueue)} parameter sets, more than n_trials "
                                        f"({self.n_trials})"))
        for i, params in enumerate(self.enqueue):
            unknown = sorted(set(params) - set(self.space))
            if unknown:
                problems.append((f"enqueue[{i}]", f"{', '.join(unknown)} not in search.space"))
            problems += [(f"enqueue[{i}].{key}", message) for key, value in params.items()
                         if key in self.space for message in _outside(self.space[key], value)]
        if problems:
            raise ConfigProblems(problems)
        return self


def _outside(dist: IntRange | FloatRange | Categorical, value: Any) -> list[str]:
    if isinstance(dist, Categorical):
        return [] if value in dist.choices else [f"{value!r} is not one of the choices {dist.choices}"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"must be a number, got {value!r}"]
    if isinstance(dist, IntRange) and not float(value).is_integer():
        return [f"must be an integer, got {value!r}"]
    if not dist.low <= value <= dist.high:
        return [f"{value!r} is outside [{dist.low}, {dist.high}]"]
    return []


class Objective(ConfigSection):
    """A metric that the search optimizes (and the sweep reports)."""

    metric: str
    """An ``eval/...`` metric of a configured task (eval/mmlu_offline/acc, eval/perplexity) or
    train/final_loss, train/peak_memory_bytes, train/mean_tokens_per_s."""
    direction: Literal["maximize", "minimize"]


class Resources(ConfigSection):
    """What each trial asks of the Ray cluster."""

    gpus: float = Field(1, ge=0)
    """GPUs per trial (1 by default); trials run on CPUs alone when the cluster has no GPU."""
    cpus: float | Literal["auto"] = "auto"
    """CPU cores per trial; auto: a GPU node's cores divided by its GPUs (the fewest of any GPU
    node), 1 on a cluster without GPUs. A trial's CPU-side work (loading, LoRA set-up, data,
    evaluation requests, checkpoints) runs on that many threads: Ray sets OMP_NUM_THREADS to it."""

    overlap: bool = True
    """Trials of one GPU take turns on it: while one trains and evaluates, the next one starts on
    the same GPU — imports, checks and tokenizes its data — and computes once the first has
    finished with the GPU (one trial trains or evaluates at a time). Hides each trial's
    start-up; has no effect on trials of other than one GPU."""
    load_ahead: bool = True
    """With ``overlap``: the trial waiting for its turn loads its model while the other one
    trains, if the GPU's free memory holds it beside the other's estimated training peak
    (``qsweep.trainers.cost_model``) with a margin; otherwise it loads in its turn. Off: only one
    trial's model is ever in a GPU's memory."""

    @field_validator("cpus")
    @classmethod
    def _check_cpus(cls, cpus: float | str) -> float | str:
        if isinstance(cpus, float) and cpus <= 0:
            raise ValueError(f"must be > 0 or auto, got {cpus:g}")
        return cpus


class ReportSpec(ConfigSection):
    """One table of ``qsweep report`` (and of the end of ``qsweep run``): a preset of the paper's
    layouts, or rows / columns / metric of its own; fields given here replace the preset's."""

    preset: str | None = None
    """table2: data type -> perplexity of the untuned base (``eval/perplexity@0``);
    table4: data type x (model, dataset) -> MMLU accuracy, with a Mean column."""
    rows: str | None = None
    """The grid axis whose labels are the rows (e.g. data_type)."""
    columns: list[str] | None = None
    """Grid axes whose label combinations are the columns (e.g. [model, dataset])."""
    metric: str | None = None
    """A metric of the trial runs; ``NAME@0`` takes its step-0 value (the untuned base)."""
    scale: float | None = Field(None, gt=0)
    """Display factor (100: accuracies as percentages)."""
    compare: tuple[str, str] | None = None
    """Two row labels compared over the same questions or documents and seeds: the difference
    (accuracy) or ratio (perplexity) with a paired bootstrap interval and a permutation test over
    whole items; with 3 or more seeds also a paired t-test over the (column, seed) pairs."""
    title: str | None = None
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """File stem of the outputs (default: the preset's, else report)."""

    @field_validator("preset")
    @classmethod
    def _check_preset(cls, preset: str | None) -> str | None:
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"must be one of {', '.join(PRESETS)}, got {preset!r}")
        return preset

    @model_validator(mode="after")
    def _check_complete(self) -> ReportSpec:
        if self.preset is None and (self.rows is None or self.metric is None):
            raise ConfigProblems([("preset", "give a preset (table2, table4) or both rows and metric")])
        return self

    def overrides(self) -> dict[str, Any]:
        """The fields set here (what replaces the preset's)."""
        return {key: value for key, value in self.model_dump(exclude={"preset"}).items() if value is not None}

    def layout(self) -> Layout:
        """The complete table this entry describes: its preset with the fields given here."""
        return layout_from(self.preset, self.overrides())


class StorageSpec(ConfigSection):
    """Where the sweep keeps its state (Optuna) and its records (MLflow)."""

    optuna: str | None = None
    """Optuna storage URL; null: SQLite in the sweep directory. On a cluster a PostgreSQL or
    MySQL URL (postgresql://user@host/db), so optuna-dashboard can browse it."""
    tracking: str | None = None
    """MLflow tracking URI; null: the base config's tracking.uri, else $MLFLOW_TRACKING_URI,
    else SQLite in the runs root."""
    experiment: str | None = None
    """MLflow experiment; null: the base config's tracking.experiment."""

    @field_validator("optuna")
    @classmethod
    def _check_optuna(cls, url: str | None) -> str | None:
        return check_url(url, ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://",
                               "mysql+pymysql://"))

    @field_validator("tracking")
    @classmethod
    def _check_tracking(cls, url: str | None) -> str | None:
        return check_url(url, TRACKING_SCHEMES)


class SweepSpec(BaseModel):
    """A sweep: every cell of ``grid`` x every seed x ``search.n_trials`` Optuna trials."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """Names the sweep: its directory, Optuna studies and MLflow parent run. Running a spec with
    the same name again resumes it."""
    base: str | None = None
    """Trial config preset (a file name in configs/trial, without .yaml) or a YAML path
    relative to the spec file."""
    trial: dict[str, Any] = {}
    """Trial config sections merged over ``base`` key by key (e.g. ``{train: {max_steps: 20}}``);
    each key given replaces the base's value whole."""
    grid: dict[str, Any] = {}
    """The ablation factors; the cells are their product. Each factor is a dotted trial key with
    a list of values (``quant.type: [nf4, fp4]``), or a named axis whose values are labelled
    settings (``data_type: {NF4+DQ: {quant.type: nf4, quant.double_quant: true}, ...}``)."""
    seeds: list[int] = [0]
    """Repeats of every cell: each seed sets train.seed (and seeds the sampler)."""
    max_trials: int = Field(10_000, gt=0)
    """The most trials the spec may plan (cells x seeds x search trials), checked before the grid
    is expanded: a typo such as a 6-axis grid of 10 values each (a million cells) is refused at
    once, with its count. Raise it for a sweep that big on purpose."""
    search: SearchSpec | None = None
    """Optuna search inside every (cell, seed); without it each (cell, seed) is one trial."""
    objectives: list[Objective] = [Objective(metric="train/final_loss", direction="minimize")]
    """What the search optimizes; several objectives need the nsga2, random or tpe sampler."""
    resources: Resources = Resources()
    """GPUs and CPUs per trial."""
    concurrency: int | None = Field(None, gt=0)
    """Trials at a time; null: as many as the cluster's GPUs (or CPUs) hold. With
    ``resources.overlap`` it counts the trials that compute at a time, each with its successor
    preparing beside it."""
    retries: int = Field(2, ge=0)
    """Times a trial whose worker process died is started again (from its checkpoint)."""
    oom_retries: int = Field(2, ge=0)
    """Times a trial that ran out of memory is retried with half the micro-batch and twice the
    gradient accumulation (the same effective batch)."""
    storage: StorageSpec = StorageSpec()
    """Optuna storage and MLflow tracking."""
    reports: list[ReportSpec] = []
    """Tables that ``qsweep report`` builds and ``qsweep run`` prints when the sweep ends, e.g.
    ``[{preset: table2}, {preset: table4, metric: eval/mmlu_offline/acc}]``."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (a directory name), got {name!r}")
        if len(name) > MAX_NAME_LENGTH:
            raise ValueError(f"must be at most {MAX_NAME_LENGTH} characters (it names directories, studies "
                             f"and runs), got {len(name)}")
        return name

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for key, values in grid.items():
            if _DOTTED.match(key):
                if not isinstance(values, list) or not values:
                    problems.append((key, "must list at least one value"))
                elif len({repr(v) for v in values}) != len(values):
                    problems.append((key, f"lists a value twice: {values}"))
            elif _NAME.match(key) and "." not in key:
                problems += _named_axis_problems(key, values)
            else:
                problems.append((key, "must be a dotted trial key (quant.type) or an axis name "
                                      "(data_type) whose values are labelled settings"))
        if problems:
            raise ConfigProblems(problems)
        return grid

    @field_validator("seeds")
    @classmethod
    def _check_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("must list at least one seed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"lists a seed twice: {seeds}")
        if any(seed < 0 for seed in seeds):
            raise ValueError(f"seeds must be >= 0, got {seeds}")
        return seeds

    @field_validator("objectives")
    @classmethod
    def _check_objectives(cls, objectives: list[Objective]) -> list[Objective]:
        if not objectives:
            raise ValueError("must name at least one objective")
        names = [o.metric for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"names a metric twice: {names}")
        return objectives

    @model_validator(mode="after")
    def _check_axes(self) -> SweepSpec:
        problems = []
        searched = set(self.search.space) if self.search else set()
        ablated = {key for axis in self.axes() for _, settings in axis.values for key in settings}
        for key in sorted(searched & ablated):
            problems.append((f"search.space.{key}", "is also a grid axis; an axis is either "
                                                     "ablated (grid) or tuned (search)"))
        axis_names = {axis.name for axis in self.axes()}
        for i, report in enumerate(self.reports):
            preset = PRESETS.get(report.preset or "")
            rows, columns = (preset.rows, preset.columns) if preset else (None, [])
            for field_name, used in (("rows", [report.rows or rows]), ("columns", report.columns or columns)):
                missing = [axis for axis in used if axis is not None and axis not in axis_names]
                if missing:
                    problems.append((f"reports[{i}].{field_name}",
                                     f"not a grid axis: {', '.join(missing)} (axes: "
                                     f"{', '.join(sorted(axis_names)) or 'none'})"))
        if "train.seed" in ablated or "train.seed" in searched:
            problems.append(("seeds", "set seeds here, not as a grid or search axis train.seed"))
        several = self.search is not None and len(self.objectives) > 1
        if several and (not SAMPLERS[self.search.sampler].multi_objective or self.search.pruner is not None):
            fit = ", ".join(name for name, kind in SAMPLERS.items() if kind.multi_objective)
            problems.append(("search.sampler", f"{len(self.objectives)} objectives need one of {fit}, "
                                               "and no pruner"))
        if problems:
            raise ConfigProblems(problems)
        return self

    def axes(self) -> list[GridAxis]:
        """The grid's factors in spec order, each value as (label, dotted settings)."""
        axes = []
        for key, values in self.grid.items():
            if _DOTTED.match(key):
                axes.append(GridAxis(key, tuple((_label(v), {key: v}) for v in values)))
            else:
                axes.append(GridAxis(key, tuple((str(label), dict(settings))
                                                for label, settings in values.items())))
        return axes

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def trials_per_cell_seed(self) -> int:
        return self.search.n_trials if self.search else 1
