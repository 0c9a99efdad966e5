"""How a trial stands: one vocabulary for the trainer, the sweep, Optuna, MLflow and the console.

A :class:`TrialStatus` is a string (``"finished"``), so it is what MLflow's ``qsweep.status`` tag,
``result.json`` and Optuna's trial attributes hold, and it knows the Optuna state and the MLflow
run status it maps to.
"""

from __future__ import annotations

from enum import StrEnum


class TrialStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    NAN = "nan"
    """Training stopped at a non-finite loss or gradient."""
    PRUNED = "pruned"
    """Stopped early by the sweep's pruner."""
    OOM = "oom"
    """Out of GPU memory (the sweep retries it with a smaller micro-batch)."""
    FAILED = "failed"
    CRASHED = "crashed"
    """Its worker process died (killed, or its machine lost)."""
    INTERRUPTED = "interrupted"
    """The driver was stopped (Ctrl-C) while it ran; resuming runs it again."""

    @property
    def optuna_state(self) -> str:
        """The ``optuna.trial.TrialState`` name a trial that ended so is told with."""
        return {TrialStatus.RUNNING: "RUNNING", TrialStatus.FINISHED: "COMPLETE",
                TrialStatus.PRUNED: "PRUNED"}.get(self, "FAIL")

    @property
    def mlflow_status(self) -> str:
        """The MLflow run status (``RunStatus`` name) of a trial that ended so."""
        return {TrialStatus.RUNNING: "RUNNING", TrialStatus.FINISHED: "FINISHED",
                TrialStatus.PRUNED: "KILLED", TrialStatus.INTERRUPTED: "KILLED"}.get(self, "FAILED")

    @property
    def is_failure(self) -> bool:
        """Ended by an error (counted as failed): failed, crashed or out of memory."""
        return self in (TrialStatus.FAILED, TrialStatus.CRASHED, TrialStatus.OOM)

    @classmethod
    def of_optuna_state(cls, state: str) -> TrialStatus:
        """The status of an Optuna trial that recorded none of its own."""
        return {"RUNNING": cls.RUNNING, "COMPLETE": cls.FINISHED, "PRUNED": cls.PRUNED}.get(state, cls.FAILED)
