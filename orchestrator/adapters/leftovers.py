"""The processes of a local Ray cluster that outlive a killed driver, found and stopped.

``qsweep run`` without ``--address`` starts a private Ray cluster as children of the driver
(GCS, raylet, their agents, workers). Ctrl-C shuts it down; a SIGKILLed driver cannot, and some
of those processes (the dashboard and runtime-env agents) may linger. The driver therefore
records the cluster's processes in the sweep directory (:func:`record`), and the next driver
of the sweep stops whatever of them still runs before it starts its own (:func:`stop`). A
process is identified by its PID and start time, so a PID reused since is left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


def record(path: Path) -> None:
    """Write the driver's descendant processes (its local cluster) to ``path``."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found.append({"pid": process.pid, "started": process.create_time(), "name": process.name()})
    path.write_text(json.dumps(found, indent=1) + "\n")


def stop(path: Path) -> int:
    """Kill the recorded processes that still run (and their descendants); remove ``path``.
    Returns how many were stopped."""
    if not path.is_file():
        return 0
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = []
    alive = []
    for entry in recorded:
        with contextlib.suppress(psutil.Error, KeyError, TypeError):
            process = psutil.Process(entry["pid"])
            if abs(process.create_time() - entry["started"]) < 1e-3:
                alive += [process, *process.children(recursive=True)]
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
    if alive:
        log.info("stopped %d processes of the local Ray cluster a killed driver left behind", len(alive))
    path.unlink(missing_ok=True)
    return len(alive)
