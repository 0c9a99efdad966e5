"""One trial, complete: ``run_trial(config, tracker, workdir) -> TrialResult``.

Train (``trainers``), evaluate the model in memory (``evaluation``), record everything
through ``tracker``. A plain function: no Ray and no Optuna; the sweep runner wraps it.

What the tracker receives:

* params: the flattened trial config (``quant.type``, ``lora.r``, ...), settings that do not
  apply to the run as ``n/a`` (the 4-bit type of a 16-bit base);
* metrics: ``train/*`` at every step; ``model/*`` footprint at step 0; ``eval/*`` at the last
  step, and at step 0 for the untuned base when ``eval.baseline`` is on (also named
  ``eval_base/*``, so tables show it beside the tuned value); ``system/*`` (CPU, memory,
  GPU utilisation and memory) every 5 s while the trial computes; ``time/<phase>_s``
  (``qsweep.trainers.phases``) at the end, and ``time/pruning_eval_s`` with each intermediate
  evaluation;
* inputs: the training data as an MLflow dataset (name, source, content digest);
* artifacts: ``config.yaml``, ``environment.json``, ``adapter/`` (peft, safetensors),
  ``eval/results.json`` (lm-eval's), ``eval/baseline/results.json``, ``traceback.txt`` on failure;
  ``result.json`` in the work directory (status, phases, training summary, metrics);
* tags: ``qsweep.status`` (running, finished, nan, pruned, failed), ``qsweep.reason``,
  ``qsweep.trial_hash``, ``qsweep.data_type``; ``qsweep.baseline_key`` (and
  ``qsweep.baseline_from``) with the untuned base's evaluation.

The untuned base is evaluated once per cell of a sweep: a trial whose sibling run (another seed)
recorded the same step-0 evaluation copies it (``qsweep.orchestrator.trial.baseline``).

A trial that runs again in the same work directory and run (a sweep retrying it) resumes from
its newest checkpoint and logs only the steps that the run does not hold yet: its metric
histories stay complete, without duplicates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from qsweep.orchestrator.trial.baseline import ARTIFACT_PATH as BASELINE_ARTIFACTS
from qsweep.orchestrator.trial.baseline import KEY_TAG, SOURCE_TAG, baseline_key, recorded_baseline
from qsweep.orchestrator.trial.config import TrialConfig
from qsweep.orchestrator.trial.gpu_turns import GpuTurns, NoTurns, memory_needs
from qsweep.orchestrator.trial.metric_sender import MetricSender
from qsweep.trainers.errors import TrackingUnavailable
from qsweep.trainers.faults import StepHook
from qsweep.trainers.metrics import StepMetrics, TrainResult
from qsweep.trainers.phases import PhaseClock
from qsweep.trainers.status import TrialStatus

log = logging.getLogger("qsweep")


class TrialPruned(Exception):
    """Raised from the step callback when the pruner stops the trial; ends it as ``pruned``."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"pruned at step {step} (intermediate value {value:.6g})")


@dataclass(frozen=True)
class Pruning:
    """Intermediate evaluations for a pruner: every ``report_every`` steps, ``report(step, value)``.

    The value is the trial's objective ``metric`` measured now: an ``eval/...`` metric runs
    the trial's evaluation; ``train/final_loss`` is the mean loss of the steps since the last
    report. ``report`` returns True to stop the trial (it is then ``pruned``).
    """

    report_every: int
    metric: str
    report: Callable[[int, float], bool]


class Tracker(Protocol):
    """Where a trial's records go (``qsweep.orchestrator.adapters.tracking.MlflowTracker`` in practice)."""

    run_id: str

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def latest_metric_steps(self) -> dict[str, int]: ...
    def runs_tagged(self, tag: str, value: str) -> list[str]: ...
    def download_artifacts(self, run_id: str, path: str, into: Path) -> Path: ...
    def log_dataset(self, name: str, source: str, digest: str, context: str = "training") -> None: ...
    def system_metrics(self, interval_s: float = 5.0) -> contextlib.AbstractContextManager[None]: ...


@dataclass
class TrialResult:
    """How a trial ended and what it measured."""

    status: str
    """finished, nan (non-finite loss), pruned or failed."""
    reason: str
    run_id: str
    workdir: Path
    train: TrainResult | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    """Evaluation of the trained model (``eval/...``)."""
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    """Evaluation of the untuned base, when ``eval.baseline`` is on."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase (``qsweep.trainers.phases``): start, load, baseline_eval, train, ..., total."""
    intermediate_evals: list[tuple[int, float]] = field(default_factory=list)
    """(step, seconds) of each evaluation for the pruner."""

    def to_dict(self) -> dict[str, Any]:
        """What ``result.json`` holds: status, run, phases, the training summary and metrics."""
        train = None
        if self.train is not None:
            train = {k: v for k, v in asdict(self.train).items() if k != "history"}
        return {"status": self.status, "reason": self.reason, "run_id": self.run_id,
                "workdir": str(self.workdir), "phases": self.phases,
                "intermediate_evals": [{"step": step, "seconds": round(seconds, 3)}
                                       for step, seconds in self.intermediate_evals], "train": train,
                "metrics": self.metrics, "baseline_metrics": self.baseline_metrics}


def excluded_subjects(cfg: TrialConfig) -> tuple[str, ...]:
    """MMLU subjects the trial trained on, which its evaluation must leave out."""
    from qsweep.trainers.mmlu import TRAIN_SUBJECTS

    return TRAIN_SUBJECTS if cfg.data.name == "mmlu-heldout" else ()


def redacted_config(cfg: TrialConfig) -> dict[str, Any]:
    """The resolved config as YAML-able data, with the tracking URI's credentials masked."""
    from qsweep.orchestrator.adapters.tracking import redact

    values = cfg.to_dict()
    if values["tracking"]["uri"]:
        values["tracking"]["uri"] = redact(values["tracking"]["uri"])
    return values


def _train_metrics(metrics: StepMetrics) -> dict[str, float]:
    return {
        "train/loss": metrics.loss,
        "train/learning_rate": metrics.learning_rate,
        "train/grad_norm": metrics.grad_norm,
        "train/tokens_per_s": metrics.tokens_per_s,
        "train/peak_memory_bytes": float(metrics.peak_memory_bytes),
        "train/epoch": metrics.epoch,
    }


@dataclass
class _Computed:
    """What the part of a trial that uses the accelerator produced."""

    status: str
    reason: str
    trained: TrainResult | None = None
    baseline: dict[str, float] = field(default_factory=dict)
    evaluation: Any = None
    """The final ``EvalOutcome`` (None without tasks, or when training did not finish)."""


def run_trial(cfg: TrialConfig, tracker: Tracker, workdir: Path,
              on_step: Callable[[StepMetrics], None] | None = None,
              pruning: Pruning | None = None, phases: PhaseClock | None = None,
              gpu_turns: GpuTurns | None = None, before_step: StepHook | None = None,
              on_eval: Callable[[str, int, int], None] | None = None) -> TrialResult:
    """Train, evaluate and record one trial. See the module docstring for what is recorded.

    A non-finite loss ends the trial with status ``nan`` (no evaluation); a pruner's stop
    (``pruning``) with status ``pruned``. Any exception is recorded (status ``failed``,
    reason, ``traceback.txt``) and raised again.

    ``phases`` times the trial (``qsweep.trainers.phases``); pass one whose ``started`` is the
    process start (or the trial's submission) so that the ``start`` phase covers imports and
    set-up; by default the trial starts now. Its time goes to MLflow (``time/<phase>_s``),
    ``result.json`` and :attr:`TrialResult.phases`, also when the trial fails.

    ``gpu_turns`` (``qsweep.orchestrator.trial.gpu_turns``) orders this trial with another one on the same
    GPU: it computes — evaluates and trains — only in its turn, which ends after the final
    evaluation once the model's memory is released; its weights load in its turn, or before it
    while the other trial trains when there is room. Everything else (imports, checks,
    tokenizer, data, artifacts) overlaps the other trial's work. Waiting is the ``wait`` phase.

    ``before_step`` is called before each optimizer step (``qsweep.trainers.faults``: test-only fault
    injection).
    """
    phases = phases or PhaseClock()
    from qsweep.orchestrator.trial.fingerprint import environment_fingerprint
    from qsweep.trainers.loop import prepare_data

    if "start" not in phases.seconds:
        phases.mark_start()  # imports included
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    result: TrialResult | None = None
    try:
        with phases.phase("record"):
            tracker.set_tags({"qsweep.status": TrialStatus.RUNNING, "qsweep.trial_hash": cfg.content_hash(),
                              "qsweep.data_type": cfg.quant.label})
            tracker.log_params(run_params(cfg))
            config_file = workdir / "config.yaml"
            config_file.write_text(yaml.safe_dump(redacted_config(cfg), sort_keys=False))
            tracker.log_artifact(config_file)
        with phases.phase("load"):
            data = prepare_data(cfg, phases)
        with phases.phase("record"):
            fingerprint = workdir / "environment.json"
            fingerprint.write_text(json.dumps(environment_fingerprint(data.data_sha256), indent=1))
            tracker.log_artifact(fingerprint)
            tracker.log_dataset(*dataset_input(cfg, data.data_sha256))
        with gpu_turns or NoTurns() as turns, tracker.system_metrics():
            with phases.phase("wait"):
                turns.wait_to_load(memory_needs(cfg, data.source))
            computed = _compute(cfg, data, tracker, workdir, phases, on_step, pruning, turns, before_step,
                                on_eval)
            with phases.phase("record"):
                _release_accelerator_memory()
        with phases.phase("record"):
            result = _record(computed, tracker, workdir)
        return result
    except BaseException as err:
        reason = f"{type(err).__name__}: {err}"[:500]
        trace = workdir / "traceback.txt"
        trace.write_text("".join(traceback.format_exception(err)))
        result = TrialResult(TrialStatus.FAILED, reason, tracker.run_id, workdir)
        try:
            tracker.set_tags({"qsweep.status": TrialStatus.FAILED, "qsweep.reason": reason})
            tracker.log_artifact(trace)
        except Exception:  # noqa: BLE001 - the original error matters more than this one
            log.exception("could not record the failure")
        raise
    finally:
        if result is not None:
            _record_phases(result, phases, tracker)


def _compute(cfg: TrialConfig, data: Any, tracker: Tracker, workdir: Path, phases: PhaseClock,
             on_step: Callable[[StepMetrics], None] | None, pruning: Pruning | None,
             turns: GpuTurns | NoTurns, before_step: StepHook | None = None,
             on_eval: Callable[[str, int, int], None] | None = None) -> _Computed:
    """Load the model onto the accelerator, evaluate the base, train, evaluate the result
    (evaluating and training in the GPU's turn)."""
    with phases.phase("load"):
        from qsweep.evaluation.batching import BatchSizer
        from qsweep.evaluation.config import EvalConfig
        from qsweep.evaluation.harness import EvalOutcome, evaluate_model
        from qsweep.trainers.loop import fit, load_model
        from qsweep.trainers.model import DTYPES, resolve_device

        setup = load_model(data, cfg, phases)
    qlora = setup.qlora
    with phases.phase("record"):
        footprint = {
            "model/base_weight_bytes": float(qlora.footprint.total_bytes),
            "model/quantized_bytes": float(qlora.footprint.quantized_bytes),
            "model/bits_per_quantized_param": qlora.footprint.bits_per_quantized_param,
            "model/trainable_params": float(qlora.trainable_params),
        }
        latest = tracker.latest_metric_steps()  # what a retried run logged before
        if not footprint.keys() <= latest.keys():
            tracker.log_metrics(footprint, step=0)
        sender = MetricSender(tracker, workdir, cfg.content_hash())
        # steps an earlier attempt trained while MLflow was away: sent now, not trained again
        logged = max(latest.get("train/loss", 0), sender.backfill(latest))
    with phases.phase("wait"):
        turns.take_turn()
    # One sizer for every evaluation of this model: its memory is measured once.
    sizer = BatchSizer.for_device(cfg.eval.batch_size, resolve_device(cfg.train.device))

    def evaluate(evaluation: EvalConfig = cfg.eval, what: str = "trained") -> EvalOutcome:
        def progress(kind: str, done: int, total: int) -> None:
            if on_eval is not None:
                on_eval(f"eval {what}, {EVAL_KINDS.get(kind, kind)}", done, total)

        with turns.allocating():  # its batches take the memory that is free
            return evaluate_model(qlora.model, qlora.tokenizer, evaluation,
                                  compute_dtype=DTYPES[cfg.quant.compute_dtype],
                                  weight_dtype=DTYPES[cfg.model.dtype],
                                  exclude_subjects=excluded_subjects(cfg), sizer=sizer, progress=progress)

    baseline: dict[str, float] = {}
    if cfg.eval.tasks and cfg.eval.baseline:
        baseline = _baseline(cfg, tracker, workdir, phases,
                             lambda: evaluate(cfg.eval.for_baseline(), "base (step 0)"), qlora.model)

    window: list[float] = []

    def record_step(metrics: StepMetrics) -> None:
        turns.training()  # memory steady from the first step on: the other trial may load
        if metrics.step > logged:
            sender.send(_train_metrics(metrics), metrics.step)
        if on_step is not None:
            on_step(metrics)
        window.append(metrics.loss)
        if pruning is None or metrics.step % pruning.report_every or metrics.step == cfg.train.max_steps:
            return
        if pruning.metric == "train/final_loss":
            value = sum(window) / len(window)
        else:
            began = phases.clock()
            intermediate = evaluate(what=f"at step {metrics.step}").metrics
            seconds = phases.clock() - began
            phases.intermediate_eval(metrics.step, seconds)
            if metrics.step > logged:  # a resumed trial has these already
                tracker.log_metrics({**intermediate, "time/pruning_eval_s": seconds}, step=metrics.step)
            value = intermediate[pruning.metric]
        window.clear()
        if pruning.report(metrics.step, value):
            raise TrialPruned(metrics.step, value)

    began = phases.clock()
    evaluating_before = phases.seconds.get("intermediate_eval", 0.0)
    try:
        trained = fit(setup, cfg, workdir, record_step, before_step=before_step)
    except TrialPruned as pruned:
        return _Computed(TrialStatus.PRUNED, str(pruned), baseline=baseline)
    finally:
        evaluating = phases.seconds.get("intermediate_eval", 0.0) - evaluating_before
        phases.add("train", phases.clock() - began - evaluating)
        waited = metrics_wait_s()
        sent = sender.flush(waited)
        sender.close()
    if not sent:
        raise TrackingUnavailable(f"the MLflow tracking store did not take the trial's step metrics for "
                                  f"{waited:.0f} s ({sender.last_error}); they wait in "
                                  f"{sender.journal} and are sent when the trial runs again")
    if cfg.train.auto_layout:  # what auto chose (a resumed run chooses the same)
        tracker.log_params({"train.chosen_micro_batch_size": trained.micro_batch_size,
                            "train.chosen_grad_accum_steps": trained.grad_accum_steps})
    if cfg.train.packing == "auto":  # what auto chose on this machine (a resumed run keeps it)
        tracker.log_params({"train.applied_packing": trained.packed})
    if cfg.train.kernels != "none":  # what the machine allowed
        tracker.log_params({"train.applied_kernels": qlora.kernels})
    if trained.damaged_checkpoints:  # set aside when resuming: the run says so
        tracker.set_tags({"qsweep.damaged_checkpoints": "; ".join(trained.damaged_checkpoints)[:4000],
                          "qsweep.resumed_from_step": str(trained.resumed_from_step)})
    if trained.status != TrialStatus.FINISHED:
        return _Computed(trained.status, trained.reason, trained, baseline)
    evaluation = None
    if cfg.eval.tasks:
        log.info("evaluating the trained model")
        with phases.phase("eval"):
            evaluation = evaluate()
    return _Computed(TrialStatus.FINISHED, trained.reason, trained, baseline, evaluation)


def _baseline(cfg: TrialConfig, tracker: Tracker, workdir: Path, phases: PhaseClock,
              evaluate: Callable[[], Any], model: Any) -> dict[str, float]:
    """The untuned base's metrics: recorded already by this run or a sibling (the same base under
    another seed: ``qsweep.orchestrator.trial.baseline``), else evaluated now and recorded."""
    key = baseline_key(cfg, excluded_subjects(cfg))
    with phases.phase("record"):
        recorded = recorded_baseline(tracker, key, workdir / "eval" / "recorded")
    if recorded is not None and recorded.run_id == tracker.run_id:
        log.info("untuned base (step 0): evaluated before by this run")
        return recorded.metrics
    if recorded is not None:
        log.info("untuned base (step 0): the evaluation of run %s, the same base under another seed",
                 recorded.run_id)
        with phases.phase("record"):
            tracker.log_metrics({**recorded.metrics, **baseline_names(recorded.metrics)}, step=0)
            tracker.log_artifact(recorded.directory, BASELINE_ARTIFACTS)
            tracker.set_tags({KEY_TAG: key, SOURCE_TAG: recorded.run_id})
        return recorded.metrics
    log.info("evaluating the untuned base model (step 0)")
    with phases.phase("baseline_eval"), model.disable_adapter():
        outcome = evaluate()
    with phases.phase("record"):
        tracker.log_metrics({**outcome.metrics, **baseline_names(outcome.metrics)}, step=0)
        for path in outcome.write(workdir / "eval" / "baseline"):
            tracker.log_artifact(path, BASELINE_ARTIFACTS)
        tracker.set_tags({KEY_TAG: key})  # last: the evaluation is complete in MLflow
    return outcome.metrics


METRICS_FLUSH_S = 600.0
"""How long a trial that finished training waits for MLflow to take its step metrics (an outage
longer than that ends the trial; its metrics wait in its journal for the next run), unless
``QSWEEP_METRICS_WAIT_S`` says otherwise."""
METRICS_WAIT_ENV = "QSWEEP_METRICS_WAIT_S"


def metrics_wait_s() -> float:
    """:data:`METRICS_FLUSH_S`, or the seconds ``QSWEEP_METRICS_WAIT_S`` sets (a number >= 0)."""
    value = os.environ.get(METRICS_WAIT_ENV, "").strip()
    if not value:
        return METRICS_FLUSH_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        log.warning("%s=%r is not a number of seconds >= 0: waiting %.0f s", METRICS_WAIT_ENV, value,
                    METRICS_FLUSH_S)
        return METRICS_FLUSH_S
    return seconds

EVAL_KINDS = {"loglikelihood": "choices", "rolling": "perplexity", "generate": "generation"}
"""How an evaluation progress row names lm-eval's request types."""
NOT_APPLICABLE = "n/a"
BASELINE_PREFIX = "eval_base/"


def run_params(cfg: TrialConfig) -> dict[str, Any]:
    """The run's params: the flattened config, with the settings that do not apply to it as
    ``n/a`` (a 16- or 8-bit base has no 4-bit type or double quantization), so that parallel
    coordinates and grouped tables do not draw it through values it never used."""
    params = cfg.flat()
    if cfg.quant.bits != 4:
        params.update({"quant.type": NOT_APPLICABLE, "quant.double_quant": NOT_APPLICABLE})
    return params


def baseline_names(metrics: dict[str, float]) -> dict[str, float]:
    """The untuned base's ``eval/...`` metrics under their own names (``eval_base/...``): the
    runs table, compare views and parallel coordinates show a metric's latest value, so the
    step-0 values need names of their own to stand beside the tuned ones."""
    return {BASELINE_PREFIX + name.removeprefix("eval/"): value for name, value in metrics.items()
            if name.startswith("eval/")}


def dataset_input(cfg: TrialConfig, digest: str) -> tuple[str, str, str]:
    """(name, source, digest) of the training data, for the run's MLflow dataset input."""
    if cfg.data.path is not None:
        return Path(cfg.data.path).name, str(cfg.data.path), digest
    name = cfg.data.name or "data"
    return name, f"qsweep data recipe {name}", digest


def _release_accelerator_memory() -> None:
    """Give the model's GPU memory back before the lease ends (the next trial loads into it)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _record(computed: _Computed, tracker: Tracker, workdir: Path) -> TrialResult:
    """The trial's outcome into MLflow: artifacts, final metrics and its status."""
    trained = computed.trained
    if computed.status != TrialStatus.FINISHED:
        tracker.set_tags({"qsweep.status": computed.status, "qsweep.reason": computed.reason})
        return TrialResult(computed.status, computed.reason, tracker.run_id, workdir, trained,
                           baseline_metrics=computed.baseline)
    assert trained is not None and trained.adapter_dir is not None
    tracker.log_artifact(trained.adapter_dir, "adapter")
    metrics: dict[str, float] = {}
    summary = trained.summary_metrics()
    final = {name: summary[name] for name in ("train/final_loss", "train/mean_tokens_per_s")}
    if computed.evaluation is not None:
        metrics = computed.evaluation.metrics
        final.update(metrics)
        for path in computed.evaluation.write(workdir / "eval"):
            tracker.log_artifact(path, "eval")
    latest = tracker.latest_metric_steps()  # a run that recorded this end before keeps its values
    unrecorded = {name: value for name, value in final.items() if latest.get(name, -1) < trained.steps}
    tracker.log_metrics(unrecorded, step=trained.steps)
    tracker.set_tags({"qsweep.status": TrialStatus.FINISHED, "qsweep.reason": trained.reason})
    return TrialResult(TrialStatus.FINISHED, trained.reason, tracker.run_id, workdir, trained,
                       metrics=metrics, baseline_metrics=computed.baseline)


def _record_phases(result: TrialResult, phases: PhaseClock, tracker: Tracker) -> None:
    """The trial's phase times into MLflow, ``result.json`` and the result (never raises)."""
    result.phases = phases.to_dict()
    result.intermediate_evals = list(phases.intermediate)
    step = result.train.steps if result.train is not None else 0
    try:
        summary = json.dumps(result.to_dict(), indent=1, default=str)
        (result.workdir / "result.json").write_text(summary + "\n")
        latest = tracker.latest_metric_steps()  # an attempt that ended at this step recorded its own
        tracker.log_metrics({name: seconds for name, seconds in phases.metrics().items()
                             if latest.get(name, -1) < step}, step=step)
    except Exception:  # noqa: BLE001 - a lost timing must not fail the trial or hide its error
        log.exception("could not record the phase timings")
