"""What a sweep trial runs on its worker: ``execute(request, report) -> TrialOutcome``.

The driver sends a :class:`TrialRequest` (the resolved config, the MLflow run to write to,
the work directory); the worker trains, evaluates and records through
:func:`qsweep.orchestrator.trial.runner.run_trial` and answers with a :class:`TrialOutcome`. No Ray here:
``qsweep.orchestrator.adapters.cluster`` runs this function in a Ray worker process and passes
``report``, the channel that takes intermediate values to the driver's pruner.

Exceptions do not escape: an out-of-memory error comes back as status ``oom`` (the driver
retries with a smaller micro-batch), anything else as ``failed`` with its traceback (also
recorded on the run). Only the death of the process itself — killed, or the machine gone —
is left for Ray to retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("qsweep")

Report = Callable[[int, float], bool]


@dataclass(frozen=True)
class TrialRequest:
    """One trial, as the driver sends it to a worker."""

    key: str
    """The trial's identity in the sweep: ``<cell>/seed<seed>/t<number>``."""
    config: dict[str, Any]
    """The resolved trial config (validated again on the worker)."""
    run_id: str
    """The MLflow child run this trial writes to (created by the driver)."""
    tracking_uri: str
    workdir: str
    objective: str
    """The first objective's metric: what intermediate reports measure."""
    report_every: int | None = None
    """Steps between intermediate reports to the pruner; None: no pruner."""
    submitted_at: float = 0.0
    """``time.time()`` when the driver submitted the trial: its ``start`` phase begins there
    (or at the worker process's start, if later)."""
    gpu_lease: bool = False
    """Trials take turns on this GPU (``resources.overlap``, ``qsweep.orchestrator.trial.gpu_turns``)."""
    load_ahead: bool = False
    """While waiting for its turn, load the model beside the trial that trains, when memory
    allows (``resources.load_ahead``)."""
    discard_other_checkpoints: bool = False
    """The config was changed since the trial last ran (a smaller micro-batch after running out
    of memory): checkpoints of the old config are removed rather than resumed from."""


@dataclass(frozen=True)
class TrialOutcome:
    """How a trial ended on its worker."""

    key: str
    status: str
    """finished, nan, pruned, oom or failed."""
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    """Evaluation metrics and the training summary (train/final_loss, train/peak_memory_bytes, ...)."""
    steps: int = 0
    resumed_from_step: int = 0
    seconds: float = 0.0
    host: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase of this attempt (``qsweep.trainers.phases``)."""


@contextlib.contextmanager
def _logging_to(workdir: Path) -> Iterator[None]:
    """The process's log into ``workdir/trial.log`` while the trial runs (a CPU trial's worker
    process runs the next trial too, which logs into its own work directory)."""
    workdir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(workdir / "trial.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("bitsandbytes", "lm_eval", "urllib3", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def gpu_turns(cfg: Any, load_ahead: bool) -> Any:
    """The turns on the GPU this worker was given, when the trial runs on it (None on a CPU)."""
    from qsweep.orchestrator.trial.gpu_turns import GpuTurns
    from qsweep.trainers.model import resolve_device

    if resolve_device(cfg.train.device).type != "cuda":
        return None
    return GpuTurns.for_visible_gpu(load_ahead=load_ahead)


def summary_metrics(result: Any) -> dict[str, float]:
    """The objectives a finished trial offers: its evaluation plus its training summary."""
    metrics = dict(result.metrics)
    trained = result.train
    if trained is not None:
        metrics.update(trained.summary_metrics())
    return metrics


def execute(request: TrialRequest, report: Report | None = None) -> TrialOutcome:
    """Run one sweep trial on this machine (see the module docstring)."""
    with _logging_to(Path(request.workdir)):
        return _execute(request, report)


def _execute(request: TrialRequest, report: Report | None) -> TrialOutcome:
    import socket

    import torch
    from qsweep.orchestrator.adapters.tracking import MlflowTracker
    from qsweep.orchestrator.trial.config import TrialConfig
    from qsweep.orchestrator.trial.runner import Pruning, run_trial
    from qsweep.trainers.checkpoint import discard_other_configs
    from qsweep.trainers.config_loading import validate
    from qsweep.trainers.faults import oom_injector
    from qsweep.trainers.phases import PhaseClock, process_started
    from qsweep.trainers.status import TrialStatus

    phases = PhaseClock(started=max(process_started(), request.submitted_at))
    started = time.perf_counter()
    workdir = Path(request.workdir)
    (workdir / "worker.pid").write_text(str(os.getpid()))
    host = socket.gethostname()
    log.info("trial %s starting on %s (pid %d, CUDA_VISIBLE_DEVICES=%s)", request.key, host, os.getpid(),
             os.environ.get("CUDA_VISIBLE_DEVICES"))

    def outcome(status: str, reason: str, **values: Any) -> TrialOutcome:
        return TrialOutcome(request.key, status, reason, seconds=time.perf_counter() - started, host=host,
                            phases=phases.to_dict() if phases.seconds else {}, **values)

    try:
        cfg = validate(request.config, TrialConfig)
        if request.discard_other_checkpoints:
            removed = discard_other_configs(workdir, cfg.content_hash())
            log.info("removed %d checkpoints of the trial's earlier config", removed)
        tracker = MlflowTracker.attach(request.tracking_uri, request.run_id)
        pruning = (Pruning(request.report_every, request.objective, report)
                   if report is not None and request.report_every else None)
        result = run_trial(cfg, tracker, workdir, pruning=pruning, phases=phases,
                           gpu_turns=gpu_turns(cfg, request.load_ahead) if request.gpu_lease else None,
                           before_step=oom_injector())
    except torch.OutOfMemoryError as err:
        return outcome(TrialStatus.OOM, f"out of memory: {str(err).splitlines()[0][:300]}")
    except Exception as err:  # noqa: BLE001 - the sweep goes on; run_trial recorded the traceback
        (workdir / "traceback.txt").write_text("".join(traceback.format_exception(err)))
        return outcome(TrialStatus.FAILED, f"{type(err).__name__}: {err}"[:500])
    trained = result.train
    return outcome(result.status, result.reason, metrics=summary_metrics(result),
                   steps=trained.steps if trained else 0,
                   resumed_from_step=trained.resumed_from_step if trained else 0)
