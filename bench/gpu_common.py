"""Helpers of the GPU benchmarks: timed commands, GPU sampling, phases read back from MLflow.

* :func:`run_timed` runs a command as a user would, each output line stamped with the seconds
  since it started (kept in a log file);
* :class:`GpuSampler` samples every GPU's utilisation and memory with ``nvidia-smi`` while a
  command runs;
* :func:`phases_of_run` reads a trial's phases from its MLflow run: the ``time/*`` metrics
  qsweep records, or — for versions that did not record them — the times at which the run's
  metrics were logged (:func:`phases_from_timestamps`).
"""

from __future__ import annotations

import csv
import datetime
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from workers import import_root


def run_timed(command: list[str], log: Path, *, env: dict[str, str] | None = None,
              cwd: Path | None = None, timeout_s: float | None = None) -> tuple[int, float]:
    """Run ``command``; its output, each line prefixed with elapsed seconds, goes to ``log``.
    Returns (exit code, wall seconds); a command past ``timeout_s`` is killed (exit code -9)."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})}, cwd=cwd, bufsize=1,
                               start_new_session=True)
    killer = None
    if timeout_s is not None:
        killer = threading.Timer(timeout_s, lambda: os.killpg(process.pid, 9))
        killer.start()
    with open(log, "w", encoding="utf-8") as sink:
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(f"{time.monotonic() - started:8.1f} {line}")
            sink.flush()
    code = process.wait()
    if killer is not None:
        killer.cancel()
    return code, time.monotonic() - started


class GpuSampler:
    """``nvidia-smi`` sampling every GPU each ``interval_ms`` into a CSV, in the background."""

    def __init__(self, path: Path, interval_ms: int = 1000):
        self.path = path
        self.interval_ms = interval_ms
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> GpuSampler:
        self._sink = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self._process = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=timestamp,index,utilization.gpu,memory.used",
             "--format=csv,noheader,nounits", f"-lms={self.interval_ms}"], stdout=self._sink,
            stderr=subprocess.DEVNULL)
        self.started = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        self.ended = time.time()
        self._process.terminate()
        self._process.wait()
        self._sink.close()

    def samples(self) -> list[dict[str, float]]:
        """Each sample: time (``time.time()``), gpu index, utilisation (%), memory used (MiB)."""
        rows = []
        with open(self.path, encoding="utf-8") as source:
            for row in csv.reader(source):
                if len(row) < 4:
                    continue
                try:
                    at = datetime.datetime.strptime(row[0].strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                    rows.append({"time": at, "gpu": int(row[1]), "util": float(row[2]),
                                 "memory_mib": float(row[3])})
                except ValueError:
                    continue
        return rows


def utilisation(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Mean utilisation per GPU and over all, and the share of samples with any kernel running."""
    by_gpu: dict[int, list[float]] = {}
    for sample in samples:
        by_gpu.setdefault(int(sample["gpu"]), []).append(sample["util"])
    every = [u for values in by_gpu.values() for u in values]
    return {
        "samples": len(every),
        "mean_util_pct": round(sum(every) / len(every), 1) if every else None,
        "busy_sample_share": round(sum(u > 0 for u in every) / len(every), 3) if every else None,
        "per_gpu_mean_util_pct": {gpu: round(sum(v) / len(v), 1) for gpu, v in sorted(by_gpu.items())},
        "peak_memory_mib": max((s["memory_mib"] for s in samples), default=None),
    }


def phases_from_timestamps(client: Any, run: Any) -> dict[str, float]:
    """Phases of a trial run recorded without ``time/*`` metrics, from when its metrics were logged.

    The trial logs ``model/*`` as loading ends, the step-0 evaluation as the baseline ends,
    ``train/loss`` after every step, the final evaluation when it ends. ``start + load`` runs from
    the run's creation (by the driver or the CLI, just before the trial starts) to the first;
    ``train`` from the baseline's end to the last step (the first step's own time included).
    """
    def times(metric: str) -> dict[int, float]:
        return {m.step: m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, metric)}

    created = run.info.start_time / 1000
    loaded = min(times("model/base_weight_bytes").values())
    baseline = times("eval/perplexity").get(0, loaded)
    losses = times("train/loss")
    last_step = max(losses)
    trained = losses[last_step]
    evaluated = max(times("eval/perplexity").get(last_step, trained), trained)
    ended = (run.info.end_time or run.info.start_time) / 1000
    phases = {"start+load": loaded - created, "baseline_eval": baseline - loaded, "train": trained - baseline,
              "eval": evaluated - trained, "record": max(0.0, ended - evaluated)}
    phases["compute"] = phases["baseline_eval"] + phases["train"] + phases["eval"]
    phases["total"] = ended - created
    return {k: round(v, 3) for k, v in phases.items()}


def phases_of_run(client: Any, run: Any) -> tuple[dict[str, float], str]:
    """(phases, source): qsweep's ``time/*`` metrics when the run has them, else timestamps."""
    from qsweep.trainers.phases import from_metrics

    recorded = from_metrics(run.data.metrics)
    if recorded:
        return recorded, "time/* metrics"
    return phases_from_timestamps(client, run), "metric timestamps"


def python() -> str:
    return sys.executable


def python_path(project: Path) -> str:
    """PYTHONPATH that imports qsweep from ``project`` and keeps the rest (the packed site)."""
    here = Path(__file__).resolve().parents[1]
    ours = {import_root(here).resolve(), here, import_root(project).resolve(), project.resolve()}
    others = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
              if p and Path(p).resolve() not in ours]
    return os.pathsep.join([str(import_root(project)), *others])
