"""Credentials in storage URLs: used in memory, never written to disk.

A sweep spec may name its stores with a password (``postgresql://qsweep:pw@db/optuna``,
``http://user:pw@mlflow:5000``). What qsweep writes to the sweep directory keeps the user and
masks the password (``postgresql://qsweep:***@db/optuna``, :func:`mask_password`); a URL that
holds the mask takes its password from the environment when the sweep is read back
(:func:`with_password`):

* ``storage.optuna`` — ``QSWEEP_OPTUNA_URL``, the whole URL;
* ``storage.tracking`` on an MLflow server (http/https) — ``MLFLOW_TRACKING_PASSWORD``,
  MLflow's own variable, for the user the URL names; its client sends them as HTTP basic
  authentication;
* ``storage.tracking`` on a database — ``QSWEEP_TRACKING_URL``, the whole URL.

An MLflow server URI never carries its credentials to MLflow's client either: they move to
those variables (:func:`server_uri`), so that ``http://user:pw@host:5000`` works.

The variables may also come from a file the user names (``--credentials FILE``,
:func:`load_credentials_file`): ``NAME=value`` lines, as a ``.env`` file, readable by its
owner only.
"""

from __future__ import annotations

import os
import stat
import urllib.parse
from pathlib import Path

from qsweep.trainers.errors import ConfigError

MASK = "***"
OPTUNA_URL_ENV = "QSWEEP_OPTUNA_URL"
TRACKING_URL_ENV = "QSWEEP_TRACKING_URL"
MLFLOW_USER_ENV, MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
CREDENTIAL_VARIABLES = (OPTUNA_URL_ENV, TRACKING_URL_ENV, MLFLOW_USER_ENV, MLFLOW_PASSWORD_ENV,
                        "MLFLOW_TRACKING_TOKEN")
"""What a credentials file may set."""


def _is_server(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def mask_password(url: str | None) -> str | None:
    """``url`` with its password (if any) replaced by ``***``; the user stays."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    return _with_credentials(url, urllib.parse.unquote(parts.username or ""), MASK)


def _with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with ``user`` (quoted here) and ``password`` (already URL-encoded, or the mask)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = urllib.parse.quote(user, safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def is_masked(url: str | None) -> bool:
    return bool(url) and urllib.parse.urlsplit(url).password == MASK


def with_password(url: str, key: str, source: str) -> str:
    """``url`` with the password the environment holds for it (module docstring): a masked one
    always; an MLflow server URI without a password too, when ``MLFLOW_TRACKING_PASSWORD`` is set
    (for the URI's user, or ``MLFLOW_TRACKING_USERNAME``). Completed in memory, so that trials
    get it on any cluster, as they get a password written in the spec. Any other URL as it is.

    Raises:
        ConfigError: the variable is not set, or names another store (``key`` is the spec key).
    """
    if _is_server(url):
        parts, password = urllib.parse.urlsplit(url), os.environ.get(MLFLOW_PASSWORD_ENV)
        if is_masked(url) and not password:
            raise ConfigError([(key, f"the sweep directory keeps {url} without its password; set "
                                     f"{MLFLOW_PASSWORD_ENV} (or run the spec that has it)")], source)
        user = urllib.parse.unquote(parts.username) if parts.username else os.environ.get(MLFLOW_USER_ENV)
        if password and user and parts.password in (None, MASK):
            return _with_credentials(url, user, urllib.parse.quote(password, safe=""))
        return url
    if not is_masked(url):
        return url
    variable = OPTUNA_URL_ENV if key.endswith("optuna") else TRACKING_URL_ENV
    full = os.environ.get(variable)
    if not full:
        raise ConfigError([(key, f"the sweep directory keeps {url} without its password; set {variable} "
                                 "to the whole URL (or run the spec that has it)")], source)
    if mask_password(full) != url:
        raise ConfigError([(key, f"{variable} names {mask_password(full)}, not {url}")], source)
    return full


def server_uri(uri: str) -> str:
    """An MLflow server URI without user and password, which go to MLflow's variables instead
    (a masked password leaves the variable as the environment set it); others as they are."""
    parts = urllib.parse.urlsplit(uri)
    if not _is_server(uri) or "@" not in parts.netloc:
        return uri
    if parts.username:
        os.environ[MLFLOW_USER_ENV] = urllib.parse.unquote(parts.username)
    if parts.password is not None and parts.password != MASK:
        os.environ[MLFLOW_PASSWORD_ENV] = urllib.parse.unquote(parts.password)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def load_credentials_file(path: Path) -> list[str]:
    """Set the credential variables (:data:`CREDENTIAL_VARIABLES`) that ``path`` holds as
    ``NAME=value`` lines (python-dotenv's format), over the environment's; the names set.

    Raises:
        ConfigError: the file cannot be read, others than its owner may read it, or it sets
            something else (a typo would otherwise leave a store without its password).
    """
    from dotenv import dotenv_values

    where = str(path)
    try:
        mode = path.stat().st_mode
        values = dotenv_values(path)
    except OSError as err:
        raise ConfigError([("--credentials", f"cannot read {path}: {err.strerror or err}")]) from None
    if not stat.S_ISREG(mode):
        raise ConfigError([("--credentials", f"{path} is not a file")])
    if mode & 0o077:
        raise ConfigError([("--credentials", f"{path} holds passwords but others may read it (mode "
                                             f"{stat.S_IMODE(mode):04o}): chmod 600 {path}")])
    unknown = sorted(set(values) - set(CREDENTIAL_VARIABLES))
    if unknown:
        raise ConfigError([(name, f"not a credential qsweep reads (known: {', '.join(CREDENTIAL_VARIABLES)})")
                           for name in unknown], where)
    empty = sorted(name for name, value in values.items() if not value)
    if empty:
        raise ConfigError([(name, "has no value") for name in empty], where)
    os.environ.update({name: value for name, value in values.items() if value})
    return sorted(values)
