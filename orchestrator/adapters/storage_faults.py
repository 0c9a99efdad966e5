"""Storage faults as one clear error: a full or read-only disk, a damaged or locked database.

Optuna, SQLAlchemy, MLflow and the file system each report such a fault in their own words,
deep in a traceback. :func:`storage_fault` recognizes it in an exception (and the exceptions it
was raised from) and says what failed, where and what to do; :func:`check_sqlite` finds a
damaged SQLite database before a sweep uses it.
"""

from __future__ import annotations

import errno
import re
import shutil
import sqlite3
from pathlib import Path

from qsweep.trainers.errors import StorageFault

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_SERVER_ERROR = re.compile(r"too many (5\d\d) error responses|failed with error code (5\d\d)")
"""An MLflow server that answered a write with an error of its own: its store failed (MLflow's
client says only the status; the server's log says why)."""
_API_REQUEST = re.compile(r"API request to (https?://[^/\s]+)(/\S*)")
_MESSAGES = (  # SQLite's words (through sqlite3, SQLAlchemy, Optuna or MLflow), what they mean
    ("database or disk is full", "full"),
    ("disk i/o error", "io"),
    ("database disk image is malformed", "damaged"),
    ("file is not a database", "damaged"),
    ("database is locked", "locked"),
    ("attempt to write a readonly database", "read-only"),
    ("read-only file system", "read-only"),
    ("no space left on device", "full"),
    ("did not take the trial's step metrics", "unreachable"),  # qsweep's, trial.runner
    ("cannot reach the mlflow tracking server", "unreachable"),
    ("connection refused", "unreachable"),  # an MLflow server or database that went away
    ("max retries exceeded", "unreachable"),
)


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [err]
    while todo:
        current = todo.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [current.__cause__, current.__context__, getattr(current, "orig", None)]
    return seen


def _fault(err: BaseException) -> tuple[str, BaseException] | None:
    """(kind, the exception that says it) for a storage fault in ``err``'s chain."""
    for link in _chain(err):
        if isinstance(link, OSError) and link.errno in _DISK_FULL:
            return "full", link
        if isinstance(link, OSError) and link.errno == errno.EROFS:
            return "read-only", link
        text = str(link).lower()
        if _SERVER_ERROR.search(text) and _API_REQUEST.search(str(link)):
            return "server", link
        for words, kind in _MESSAGES:
            if words in text:
                return kind, link
    return None


def fault_kind(err: BaseException) -> str | None:
    """``full``, ``read-only``, ``damaged``, ``locked``, ``unreachable``, ``server`` (an MLflow
    server that answered with an error of its own) or ``io`` when ``err`` (or an exception behind
    it) is a storage fault; None otherwise."""
    found = _fault(err)
    return found[0] if found else None


class StoreFailed(Exception):
    """A trial ended because a store it writes failed (its reason names the fault): the sweep
    stops, leaving the trial to run again on resume (:func:`storage_fault` says it for the user)."""


def fault_kind_in(text: str) -> str | None:
    """The kind of storage fault that a message (a failed trial's reason) reports, if any."""
    return fault_kind(Exception(text))


def storage_fault(err: BaseException, root: Path, stores: str, resume: str) -> StorageFault | None:
    """The :class:`StorageFault` that ``err`` is, said for the user (None when it is not one).

    Args:
        root: the runs root (its disk is the one that filled up, most likely).
        stores: the stores in use, credentials masked, for the message.
        resume: the command that continues once the cause is fixed.
    """
    found = _fault(err)
    if found is None:
        return None
    kind, link = found
    detail = str(link).splitlines()[0][:200] if str(link) else type(link).__name__
    if kind == "full":
        free = _free_space(root)
        what = f"the disk is full ({detail}; {free} free under {root})"
        todo = "free space"
    elif kind == "read-only":
        what, todo = f"a store is on a read-only disk ({detail})", "make it writable"
    elif kind == "damaged":
        what = f"a database is damaged ({detail})"
        todo = "restore it from a backup, or run the spec under another name"
    elif kind == "locked":
        what, todo = f"a database stayed locked ({detail})", "stop the other program that holds it"
    elif kind == "server":
        request, status = _API_REQUEST.search(str(link)), _SERVER_ERROR.search(str(link).lower())
        what = (f"the MLflow server at {request.group(1)} answered HTTP {status.group(1) or status.group(2)} "
                f"to {request.group(2)}: it could not store what was sent (its own database or disk, "
                "most likely; the server's log says why)")
        todo = "fix the server's store"
    elif kind == "unreachable":
        what, todo = f"a store stayed out of reach ({detail})", "bring it back"
    else:
        what, todo = f"a disk failed to read or write ({detail})", "check the disk"
    return StorageFault(f"{what}. Stores: {stores}. What was recorded before is kept: {todo}, then "
                        f"run `{resume}`.")


def check_sqlite(path: Path, what: str) -> None:
    """Fail with a clear message when the SQLite database at ``path`` exists and is damaged.

    Raises:
        StorageFault: SQLite's quick check finds it damaged, cannot read it as a database, or
            waits 10 s for another program's lock on it.
    """
    if not path.is_file():
        return
    connection = None
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as err:
        verdict = str(err)
    finally:
        if connection is not None:
            connection.close()
    if verdict == "database is locked":
        raise StorageFault(f"{what} {path} is locked by another program (SQLite: {verdict}); stop it "
                           "(a SQLite browser, a copy in progress) and try again")
    if verdict != "ok":
        raise StorageFault(f"{what} {path} is damaged (SQLite: {verdict[:200]}); restore it from a "
                           "backup, or run the spec under another name (its MLflow runs stay where "
                           "they are)")


def _free_space(path: Path) -> str:
    for folder in (path, *path.parents):
        if folder.exists():
            free = shutil.disk_usage(folder).free
            return f"{free / 2**20:.1f} MiB"
    return "unknown"
