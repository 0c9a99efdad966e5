"""qsweep's errors and exit codes: one base class, each kind with the exit code it ends in.

The command line (``qsweep.orchestrator.cli.main``) prints a :class:`QsweepError`'s message and
returns its :attr:`~QsweepError.exit_code`; any other exception is a bug and ends in a traceback.

Exit codes: 0 success; 1 a runtime failure (an unreachable hub, bad data, a failed download, a
report that cannot be made, a failed trial); 2 an invalid configuration, reported before anything
expensive starts; 3 a trial that ended with a non-finite loss; 4 a store that cannot be reached,
read or written (an MLflow server or database that is down, a damaged or locked database, a full
or read-only disk: what was recorded stays; fix the cause and resume); 130 interrupted.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_NAN, EXIT_STORAGE, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class QsweepError(Exception):
    """An error the user can act on; the message says what is wrong and what to do."""

    exit_code = EXIT_FAILED


class ConfigError(QsweepError):
    """Invalid configuration: ``problems`` holds (key path, message) pairs."""

    exit_code = EXIT_CONFIG

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = [f"config error{where} ({count}):"]
        lines += [f"  {path}: {message}" if path else f"  {message}" for path, message in problems]
        super().__init__("\n".join(lines))


class SetupError(QsweepError):
    """A valid config that cannot be applied: the model or lm-eval lacks what it names;
    ``key`` is the config key at fault."""

    exit_code = EXIT_CONFIG

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class UnknownSweep(QsweepError):
    """A sweep name that no sweep directory holds; the message lists the known ones."""

    exit_code = EXIT_CONFIG


class ResumeMismatch(QsweepError):
    """The checkpoint in the work directory was written by a different configuration."""

    exit_code = EXIT_CONFIG


class DataError(QsweepError):
    """The data could not be loaded or rendered; the message says why and what to do."""


class AssetError(QsweepError):
    """An offline asset could not be fetched, built or verified; the message says what to do."""


class HubUnavailable(QsweepError):
    """The hub cannot be reached (or offline mode is on) and nothing local can stand in."""


class StorageError(QsweepError):
    """A store that qsweep records into cannot be reached, read or written."""

    exit_code = EXIT_STORAGE


class StorageFault(StorageError):
    """A store failed while in use or cannot be opened: a full or read-only disk, a damaged or
    locked database; the message names it and says what to do."""


class TrackingUnavailable(StorageError):
    """The MLflow tracking store cannot be reached or written; the message says what to do."""


class StorageUnavailable(StorageError):
    """The Optuna storage cannot be reached."""


class ReportError(QsweepError):
    """The sweep or the layout cannot make a report; the message says why."""
