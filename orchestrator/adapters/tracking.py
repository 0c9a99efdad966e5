"""MLflow tracking: the one module of qsweep that imports mlflow.

A :class:`MlflowTracker` records one run through ``MlflowClient`` (no global "active run"
state, so several trials in one process, or runs created elsewhere, do not interfere). The
tracking URI comes from the config, else ``$MLFLOW_TRACKING_URI``, else a SQLite store in the
runs root (``qsweep-runs/mlflow.db``, artifacts in ``qsweep-runs/mlartifacts``). An
``http://`` server works the same; run it with ``--serve-artifacts`` so trial machines send
artifacts through it and need no shared disk.

Credentials never leave this module in clear: :func:`redact` masks the user, password and
secret-looking query values of any URI before it is printed or logged.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qsweep.orchestrator.adapters.credentials import MLFLOW_PASSWORD_ENV, MLFLOW_USER_ENV, server_uri
from qsweep.orchestrator.adapters.storage_faults import check_sqlite
from qsweep.trainers.errors import ConfigError, TrackingUnavailable
from qsweep.trainers.hub import PROBE_TIMEOUT_S

log = logging.getLogger("qsweep")

_SECRET_KEYS = ("token", "password", "passwd", "secret", "key", "auth", "credential", "sig")


def redact(uri: str) -> str:
    """``uri`` with user, password and secret-looking query values replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "***"
    netloc = parts.netloc
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    secret_query = any(any(s in k.lower() for s in _SECRET_KEYS) for k, _ in query)
    if "@" not in netloc and not secret_query:
        return uri  # nothing to hide (and sqlite:///path keeps its three slashes)
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    cleaned = [(k, "***" if any(s in k.lower() for s in _SECRET_KEYS) else v) for k, v in query]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path,
                                    urllib.parse.urlencode(cleaned, safe="*"), parts.fragment))


def scrub(text: str, uri: str) -> str:
    """``text`` with the password and user of ``uri`` masked wherever they appear."""
    parts = urllib.parse.urlsplit(uri)
    for secret in (parts.password, parts.username):
        if secret:
            text = text.replace(secret, "***").replace(urllib.parse.unquote(secret), "***")
    return text.replace(uri, redact(uri))


def resolve_uri(configured: str | None, root: Path) -> str:
    """The tracking URI: the config's, else ``$MLFLOW_TRACKING_URI``, else SQLite under ``root``."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def local_artifact_root(uri: str, root: Path | None = None) -> str | None:
    """Where the experiments qsweep creates keep their artifacts: a SQLite store's beside its
    database file (``mlartifacts``); a database server's (PostgreSQL, MySQL) under the runs root
    ``root`` (MLflow would put them in ``./mlruns`` of whatever directory the command ran in); an
    MLflow server's where the server says (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    if root is not None and not uri.startswith(("http://", "https://", "file:")) and "://" in uri:
        return (Path(root) / "mlartifacts").resolve().as_uri()
    return None


def check_reachable(uri: str, key: str = "tracking.uri", source: str | None = None) -> None:
    """Fail fast, before any training, if the tracking store cannot be used.

    Raises:
        TrackingUnavailable: the store cannot be reached or opened.
        ConfigError: an MLflow server refused the credentials (``key`` names the setting).
    """
    uri = server_uri(uri)
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        try:
            urllib.request.urlopen(health, timeout=PROBE_TIMEOUT_S)  # noqa: S310 (http only)
        except urllib.error.HTTPError as err:
            if err.code not in (401, 403):  # those: reachable; the credentials are checked below
                raise TrackingUnavailable(f"MLflow tracking server {redact(uri)} answered "
                                          f"{err.code} to {redact(health)}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingUnavailable(
                f"cannot reach the MLflow tracking server at {redact(uri)} ({reason}); start it "
                "or set tracking.uri to another store (unset, runs are recorded locally)"
            ) from None
        _check_credentials(uri, key, source)
        return
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingUnavailable(f"cannot create the local MLflow store in {folder}: {err}; choose a "
                                      "writable --root (or another tracking store)") from None
        check_sqlite(Path(uri[len("sqlite:///"):]), "the MLflow database")
        return
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure here means "unusable store"
        raise TrackingUnavailable(f"cannot use the MLflow tracking store {redact(uri)}: "
                                  f"{type(err).__name__}") from None


def _check_credentials(uri: str, key: str, source: str | None) -> None:
    """One request that needs them, as the runs will make (MLflow's client sends the user and
    password of the URI or of ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``)."""
    from mlflow.exceptions import MlflowException

    try:
        _client(uri).search_experiments(max_results=1)
    except MlflowException as err:
        status = err.get_http_status_code()
        if status not in (401, 403):
            return  # not about credentials: the runs' own requests say what it is
        user = os.environ.get(MLFLOW_USER_ENV)
        refused = ("refused the credentials (HTTP 401)" if status == 401 else
                   f"refused user {user!r} access to experiments (HTTP 403)")
        raise ConfigError([(key, f"the MLflow tracking server at {redact(uri)} {refused}: give the user "
                                 "and password in the URI (http://user:password@host:port) or in "
                                 f"{MLFLOW_USER_ENV} and {MLFLOW_PASSWORD_ENV}")], source) from None


@functools.cache
def _client(uri: str) -> Any:
    # One client per store and process: creating one costs ~0.1 s, and a sweep driver makes
    # several calls per trial.
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=server_uri(uri))


_experiment_ids: dict[tuple[str, str], str] = {}
_UNIQUE_VIOLATION = re.compile(r"unique constraint|duplicate entry|duplicate key value", re.IGNORECASE)
"""SQLite's, MySQL's and PostgreSQL's words for an insert that broke a unique key."""


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def experiment_id(client: Any, name: str, artifact_root: str | None) -> str:
    """The id of experiment ``name``, created if needed (safe against concurrent creators)."""
    from mlflow.exceptions import MlflowException

    cached = _experiment_ids.get((client.tracking_uri, name))
    if cached is not None:
        return cached
    found = client.get_experiment_by_name(name)
    if found is not None:
        identifier = found.experiment_id
    else:
        try:
            # The kind makes the MLflow UI open on the runs table (model training), not on the
            # GenAI traces overview that it infers for an experiment without one.
            identifier = client.create_experiment(name, artifact_location=artifact_root,
                                                  tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
        except MlflowException:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            identifier = found.experiment_id
    _experiment_ids[(client.tracking_uri, name)] = identifier
    return identifier


def find_runs(uri: str, experiment: str, tags: dict[str, str]) -> list[Any]:
    """Every run of ``experiment`` whose tags have these values (all pages), oldest first."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    runs, token = [], None
    while True:
        page = client.search_runs([found.experiment_id], filter_string=query, max_results=1000,
                                  page_token=token, order_by=["attributes.start_time ASC"])
        runs += list(page)
        token = page.token
        if not token:
            return runs


class MlflowTracker:
    """One MLflow run, written through ``MlflowClient``. Create with :meth:`start`."""

    def __init__(self, client: Any, run_id: str, experiment: str, uri: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment
        self.uri = server_uri(uri)

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, tags: dict[str, str] | None = None,
              parent_run_id: str | None = None, root: Path | None = None) -> MlflowTracker:
        """Create a run in ``experiment`` (nested under ``parent_run_id`` when given); an
        experiment created for it keeps its artifacts where :func:`local_artifact_root` says."""
        client = _client(uri)
        exp_id = experiment_id(client, experiment, local_artifact_root(uri, root))
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id, exp_id, uri)

    @classmethod
    def attach(cls, uri: str, run_id: str) -> MlflowTracker:
        """Write to an existing run (created by the sweep driver, maybe on another machine)."""
        client = _client(uri)
        run = client.get_run(run_id)
        return cls(client, run_id, run.info.experiment_id, uri)

    @property
    def ui_url(self) -> str | None:
        """Link to the run in the MLflow UI of an http(s) server; None for local stores."""
        if self.uri.startswith(("http://", "https://")):
            base = redact(self.uri).rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return None

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not logged yet (a retried trial's run already holds its first ones)."""
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param_value(v)) for k, v in params.items() if k not in logged]
        for chunk in _chunks(items, 100):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for chunk in _chunks(items, 1000):
            self.client.log_batch(self.run_id, metrics=chunk)

    def latest_metric_steps(self) -> dict[str, int]:
        """Each metric of this run and the highest step it was logged at (MLflow keeps a
        metric's latest value at its highest step)."""
        return {m.key: m.step for m in self.client.get_run(self.run_id).data._metric_objs}

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def runs_tagged(self, tag: str, value: str) -> list[str]:
        """Ids of this run and of its siblings (runs of the same parent) whose ``tag`` is ``value``
        (qsweep's own hashes and ids: nothing to escape), oldest first."""
        parent = self.client.get_run(self.run_id).data.tags.get("mlflow.parentRunId")
        query = f"tags.`{tag}` = '{value}'"
        if parent:
            query += f" and tags.`mlflow.parentRunId` = '{parent}'"
        else:
            query += f" and attributes.run_id = '{self.run_id}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000,
                                       order_by=["attributes.start_time ASC"])
        return [run.info.run_id for run in runs]

    def download_artifacts(self, run_id: str, path: str, into: Path) -> Path:
        """``run_id``'s artifacts under ``path`` into the directory ``into``; returns their folder."""
        into.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, path, str(into)))

    def log_dataset(self, name: str, source: str, digest: str, context: str = "training") -> None:
        """Record the run's data as an MLflow dataset input (the runs table's Dataset column): a
        name, where it comes from (a hub id or a local path) and its content digest. Logged once."""
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        logged = self.client.get_run(self.run_id).inputs.dataset_inputs
        if any(d.dataset.digest == digest[:36] for d in logged):
            return
        dataset = MetaDataset(HTTPDatasetSource(source), name=name, digest=digest[:36])
        tags = [InputTag(key="mlflow.data.context", value=context)]
        inputs = [DatasetInput(dataset._to_mlflow_entity(), tags=tags)]
        try:
            self.client.log_inputs(self.run_id, datasets=inputs)
        except MlflowException as err:
            # Runs of one experiment that log the same dataset at once race in the server's
            # check-then-insert (trials of a sweep resuming together): the loser's insert breaks
            # the datasets table's unique key. The dataset exists now; a second call links it.
            if not _UNIQUE_VIOLATION.search(str(err)):
                raise
            self.client.log_inputs(self.run_id, datasets=inputs)

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float = 5.0) -> Iterator[None]:
        """Log CPU, memory, disk and (with nvidia-ml-py) GPU utilisation and memory as
        ``system/*`` metrics every ``interval_s`` while the block runs and once at its end. Each
        sample's step is its time in milliseconds (the UI plots system metrics over time), so
        attempts of one run — a retry, or a worker that outlived its killed driver beside the
        resumed one — never log a step twice."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        class TimeStepped(SystemMetricsMonitor):
            def publish_metrics(self, metrics: dict[str, float]) -> None:
                self._logging_step = time.time_ns() // 1_000_000
                super().publish_metrics(metrics)

        monitor = None
        try:
            monitor = TimeStepped(self.run_id, sampling_interval=interval_s, tracking_uri=self.uri)
            monitor.start()
        except Exception as err:  # noqa: BLE001 - a trial runs without system metrics
            log.warning("system metrics are off: %s", err)
        try:
            yield
        finally:
            if monitor is not None:
                monitor.finish()
                try:  # one last sample: the end of the block, and the only one of a short block
                    monitor.collect_metrics()
                    monitor.publish_metrics(monitor.aggregate_metrics())
                    monitor.mlflow_logger.flush()
                except Exception as err:  # noqa: BLE001 - the trial's records matter more
                    log.warning("system metrics: the last sample was not logged: %s", err)

    def finish(self, status: str) -> None:
        """End the run: FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)

    def reopen(self) -> None:
        """Mark an ended run as running again (a sweep resumed it)."""
        self.client.update_run(self.run_id, status="RUNNING")


def _param_value(value: Any) -> str:
    """A param as MLflow stores it: structured values (lists, mappings) as JSON, others as text."""
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = "null" if value is None else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
