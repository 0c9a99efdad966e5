"""Where a trial's wall-clock time goes: its phases, timed and summed.

A trial passes through fixed phases; :class:`PhaseClock` times them and the trial records
them (MLflow metrics ``time/<phase>_s``, ``result.json``, the command's summary):

========================  ===============================================================
``start``                 process start (or, on a sweep worker, the trial's submission) to
                          the config being ready: interpreter, imports, tracking set-up
``load``                  model and data: LoRA targets, tokenizer, training data, weights
                          (read and quantized), k-bit preparation, LoRA adapters
                          (sub-phases ``load/<part>``)
``wait``                  waiting for the GPU while another trial uses it (sweeps that
                          overlap trials: ``resources.overlap``)
``baseline_eval``         evaluation of the untuned base (``eval.baseline``)
``train``                 the optimization loop, checkpoints included, without the
                          intermediate evaluations
``intermediate_eval``     evaluations for the pruner during training (all of them)
``eval``                  the final evaluation
``record``                adapter and evaluation artifacts, final metrics and tags
========================  ===============================================================

``compute`` is what a GPU is held for: training and evaluating. Example::

    phases = PhaseClock(started=process_started())
    with phases.phase("load"):
        ...
    phases.metrics()   # {"time/start_s": ..., "time/load_s": ..., "time/total_s": ...}
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

PHASES = ("start", "load", "wait", "baseline_eval", "train", "intermediate_eval", "eval", "record")
"""The top-level phases, in the order a trial runs them."""
COMPUTE_PHASES = ("baseline_eval", "train", "intermediate_eval", "eval")
"""The phases that use the accelerator for what the trial is for: training and evaluating."""
LABELS = {"start": "start (imports, set-up)", "load": "load (model, data)",
          "wait": "waiting for the GPU", "baseline_eval": "baseline evaluation", "train": "training",
          "intermediate_eval": "intermediate evaluations", "eval": "final evaluation",
          "record": "recording"}
"""How summaries name each phase."""
SHORT_LABELS = {"start": "start", "load": "load", "wait": "wait", "baseline_eval": "base",
                "train": "train", "intermediate_eval": "prune", "eval": "eval", "record": "rec"}
"""Column headings of per-trial phase tables."""


def process_started() -> float:
    """This process's start as a ``time.time()`` timestamp (Linux: from /proc; else now)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            # Field 22, after the parenthesised command name (which may hold spaces).
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as system:
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class PhaseClock:
    """Wall-clock seconds per phase of one trial (a phase entered twice accumulates).

    Args:
        started: ``time.time()`` timestamp at which the trial began (its process start, or its
            submission); :meth:`mark_start` turns the time up to now into the ``start`` phase.
        clock: seconds for intervals (injectable for tests).
    """

    def __init__(self, started: float | None = None, clock: Callable[[], float] = time.perf_counter):
        self.started = time.time() if started is None else started
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.intermediate: list[tuple[int, float]] = []
        """(step, seconds) of each intermediate evaluation."""

    def mark_start(self) -> float:
        """Record ``start`` as the time since ``started``; returns it."""
        self.seconds["start"] = max(0.0, time.time() - self.started)
        return self.seconds["start"]

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (also when it raises)."""
        began = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - began)

    def intermediate_eval(self, step: int, seconds: float) -> None:
        self.intermediate.append((step, seconds))
        self.add("intermediate_eval", seconds)

    @property
    def compute_s(self) -> float:
        """Seconds spent training and evaluating."""
        return sum(self.seconds.get(name, 0.0) for name in COMPUTE_PHASES)

    @property
    def total_s(self) -> float:
        """Seconds of the top-level phases together."""
        return sum(self.seconds.get(name, 0.0) for name in PHASES)

    def to_dict(self) -> dict[str, float]:
        """Top-level phases, then sub-phases (``load/weights``), then ``compute`` and ``total``."""
        ordered = {name: self.seconds[name] for name in PHASES if name in self.seconds}
        ordered.update({name: value for name, value in self.seconds.items() if name not in ordered})
        return {**{k: round(v, 3) for k, v in ordered.items()},
                "compute": round(self.compute_s, 3), "total": round(self.total_s, 3)}

    def metrics(self) -> dict[str, float]:
        """The phases as MLflow metrics: ``time/<phase>_s``."""
        return {f"time/{name}_s": value for name, value in self.to_dict().items()}


def from_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A trial's phases read back from its MLflow metrics (``time/<phase>_s``, as recorded by
    :meth:`PhaseClock.metrics`; the per-evaluation ``time/pruning_eval_s`` left out)."""
    return {name[len("time/"):-len("_s")]: value for name, value in metrics.items()
            if name.startswith("time/") and name.endswith("_s") and name != "time/pruning_eval_s"}
