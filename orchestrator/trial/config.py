"""A trial config: the trainer's sections plus ``eval`` and ``tracking``.

Load with :func:`load_trial_config`; every problem is reported with its key path before
anything loads. Example::

    qsweep trial configs/trial/smollm2-offline.yaml eval.limit=5 tracking.uri=http://127.0.0.1:5000
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from pydantic import field_validator
from qsweep.evaluation.config import EvalConfig
from qsweep.trainers.config import ConfigSection, TrainingConfig
from qsweep.trainers.config_loading import load_config

TRACKING_SCHEMES = ("http://", "https://", "sqlite:///", "postgresql://", "postgresql+psycopg2://",
                    "mysql://", "mysql+pymysql://", "file:", "databricks")


_HOST = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$|^[0-9a-fA-F:.]+$")


def check_url(url: str | None, schemes: tuple[str, ...]) -> str | None:
    """``url`` if it starts with one of ``schemes``, names a valid host (servers) and any port it
    names is a number in range; the error never repeats the URL (it may hold a password)."""
    if url is None:
        return None
    if not url.startswith(schemes):
        raise ValueError(f"must start with one of {', '.join(schemes)}, got a URI with scheme "
                         f"{url.split(':', 1)[0]!r}")
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError as err:
        raise ValueError(f"has an invalid port ({err})") from None
    host = parts.hostname or ""
    if not host and url.startswith(("http://", "https://")):  # (a database may be a local socket)
        raise ValueError("names no host (scheme://host:port/...)")
    if host and not url.startswith("sqlite") and not _HOST.match(host):
        raise ValueError(f"has an invalid host {host!r} (letters, digits, '-' and '.', or an IP address)")
    return url


class TrackingConfig(ConfigSection):
    """Where MLflow records the trial (not part of the trial's identity)."""

    uri: str | None = None
    """MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else a SQLite store in the runs root."""
    experiment: str = "qsweep"
    """MLflow experiment that holds the run."""
    run_name: str | None = None
    """Display name of the run; null: <model>-<data type>-<hash>."""

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str | None) -> str | None:
        return check_url(uri, TRACKING_SCHEMES)


class TrialConfig(TrainingConfig):
    """Everything one trial needs: training, evaluation and tracking."""

    NON_IDENTITY_SECTIONS = ("tracking",)

    eval: EvalConfig = EvalConfig()
    """Evaluation with lm-eval after training."""
    tracking: TrackingConfig = TrackingConfig()
    """MLflow tracking."""


def load_trial_config(path: Path, overrides: list[str] | None = None) -> TrialConfig:
    """Load a trial config YAML with ``key=value`` overrides (see ``qsweep.trainers.config_loading``)."""
    return load_config(path, overrides, schema=TrialConfig)
