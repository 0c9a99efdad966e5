"""Credentials in storage URLs: used in memory, never written to disk.

A sweep spec may name its stores with a password (``postgresql://qsweep:pw@db/optuna``,
``http://user:pw@mlflow:5000``). What qsweep writes to the sweep directory keeps the user and
masks the password (``postgresql://qsweep:***@db/optuna``, :func:`mask_password`); a URL that
holds the mask takes its password from the environment when the sweep is read back
(:func:`with_password`):

* ``storage.optuna`` — ``QSWEEP_OPTUNA_URL``, the whole URL;
* ``storage.tracking`` on an MLflow server (http/https) — ``MLFLOW_TRACKING_PASSWORD`` (and
  ``MLFLOW_TRACKING_USERNAME``), MLflow's own variables, which its client sends as HTTP basic
  authentication;
* ``storage.tracking`` on a database — ``QSWEEP_TRACKING_URL``, the whole URL.

An MLflow server URI never carries its credentials to MLflow's client either: they move to
those variables (:func:`server_uri`), so that ``http://user:pw@host:5000`` works.
"""

from __future__ import annotations

import os
import urllib.parse

from qsweep.trainers.errors import ConfigError

MASK = "***"
OPTUNA_URL_ENV = "QSWEEP_OPTUNA_URL"
TRACKING_URL_ENV = "QSWEEP_TRACKING_URL"
MLFLOW_USER_ENV, MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


def _is_server(url: str) -> bool:
    return url.startswith(("http://", "https://"))


def mask_password(url: str | None) -> str | None:
    """``url`` with its password (if any) replaced by ``***``; the user stays."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user, host = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0], parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


def is_masked(url: str | None) -> bool:
    return bool(url) and urllib.parse.urlsplit(url).password == MASK


def with_password(url: str, key: str, source: str) -> str:
    """``url`` whose password is the mask, completed from the environment (module docstring);
    any other URL as it is.

    Raises:
        ConfigError: the variable is not set, or names another store (``key`` is the spec key).
    """
    if not is_masked(url):
        return url
    if _is_server(url):
        if not os.environ.get(MLFLOW_PASSWORD_ENV):
            raise ConfigError([(key, f"the sweep directory keeps {url} without its password; set "
                                     f"{MLFLOW_PASSWORD_ENV} (or run the spec that has it)")], source)
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
