"""A trial's step metrics on their way to MLflow, without holding training up.

Each step's metrics are written to a journal in the trial's work directory first
(``train_metrics.jsonl``), then sent by a background thread. While the tracking server cannot be
reached, the thread retries (every ``retry_s``) and training goes on; the metrics reach MLflow
when it is back. A trial that ends with metrics still unsent (the server stayed away) says so
(:meth:`MetricSender.flush`), and its resumed or retried run sends what the journal holds and
MLflow lacks (:meth:`MetricSender.backfill`): no step is lost silently, none is logged twice.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOURNAL = "train_metrics.jsonl"


class MetricSender:
    """Journal, then send in the background (see the module docstring).

    Args:
        tracker: has ``log_metrics(metrics, step)`` (the trial's MLflow run).
        workdir: the trial's work directory (the journal's home).
        config_hash: the trial config's identity; the journal's lines of another config (an
            out-of-memory retry's larger micro-batch) are never sent.
        retry_s: seconds between attempts while sending fails.
    """

    def __init__(self, tracker: Any, workdir: Path, config_hash: str, retry_s: float = 5.0):
        self.tracker, self.retry_s, self.config_hash = tracker, retry_s, config_hash
        self.journal = Path(workdir) / JOURNAL
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[tuple[dict[str, float], int] | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Condition()
        self._closing = threading.Event()
        self.failing_since: float | None = None
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name="qsweep-metric-sender", daemon=True)
        self._thread.start()

    def send(self, metrics: dict[str, float], step: int) -> None:
        """Journal ``metrics`` of ``step`` and queue them for MLflow."""
        with open(self.journal, "a", encoding="utf-8") as sink:
            sink.write(json.dumps({"step": step, "config": self.config_hash, "metrics": metrics}) + "\n")
        self._enqueue(metrics, step)

    def backfill(self, logged: dict[str, int]) -> int:
        """Queue what the journal holds past ``logged`` (metric -> last step MLflow has: a run
        resumed after an outage); the last step queued (0 if none)."""
        last = 0
        for line in self.journal.read_text(encoding="utf-8").splitlines() if self.journal.is_file() else []:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if entry.get("config") != self.config_hash:
                continue
            missing = {k: v for k, v in entry["metrics"].items() if entry["step"] > logged.get(k, 0)}
            if missing:
                self._enqueue(missing, entry["step"])
                last = max(last, entry["step"])
        if last:
            log.info("sending the journal's step metrics that MLflow lacks, up to step %d", last)
        return last

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for everything queued to reach MLflow; whether it did."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 1.0))
        return True

    def close(self) -> None:
        """Stop the thread (what is unsent stays in the journal)."""
        self._closing.set()
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _enqueue(self, metrics: dict[str, float], step: int) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put((metrics, step))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            metrics, step = item
            while True:
                try:
                    self.tracker.log_metrics(metrics, step=step)
                    break
                except Exception as err:  # noqa: BLE001 - unreachable or failing: retry, never drop
                    if self.failing_since is None:
                        self.failing_since = time.monotonic()
                        log.warning("MLflow cannot take the step metrics (%s); training goes on, they "
                                    "wait in %s and are sent when it is back", type(err).__name__,
                                    self.journal)
                    first_line = (str(err).splitlines() or [""])[0][:500]  # MLflow says the status last
                    self.last_error = f"{type(err).__name__}: {first_line}"
                    if self._closing.wait(self.retry_s):
                        return  # closing: what is unsent stays in the journal
            if self.failing_since is not None:
                log.warning("MLflow is back after %.0f s: step metrics sent",
                            time.monotonic() - self.failing_since)
                self.failing_since = None
            with self._lock:
                self._pending -= 1
                self._lock.notify_all()
