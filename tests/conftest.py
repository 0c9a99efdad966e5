"""Shared fixtures: a tiny random Llama, small datasets, config builders, real servers
(MLflow, a local Ray cluster with declared GPUs, a PostgreSQL database)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

SLOW_MODULES = {"test_demo.py", "test_sweep.py", "test_smollm2.py", "test_smollm2_eval.py"}
"""End-to-end modules of minutes each (sweeps on Ray, the demo, the real SmolLM2): marked
``slow``; ``make test-quick`` leaves them out, ``make test`` (CI) runs everything."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 64) with random weights and a byte-level tokenizer."""
    from qsweep.trainers.random_model import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("models") / "tiny-llama", "tiny", seed=0)


@pytest.fixture(scope="session")
def repeated_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight prompt/response pairs: small enough to memorize in a few dozen steps."""
    rows = [{"prompt": f"Q: what is {i} plus {i}?", "response": f" A: {2 * i}."} for i in range(8)]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with each section of ``extra`` updated into it (neither is changed)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in extra.items():
        if isinstance(values, dict):
            out.setdefault(section, {}).update(values)
        else:
            out[section] = values
    return out


@pytest.fixture(scope="session")
def tiny_trial(tiny_model_dir: Path, repeated_data: Path) -> Callable[..., dict[str, Any]]:
    """The tests' one trial config, as the dict a YAML file holds: the tiny model on the repeated
    pairs, on CPU in fp32, 30 steps. ``tiny_trial(train={"max_steps": 5}, eval={...})`` updates
    sections."""
    base = {
        "model": {"name": str(tiny_model_dir), "dtype": "fp32"},
        "quant": {"compute_dtype": "fp32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 30, "micro_batch_size": 4, "grad_accum_steps": 2,
                  "learning_rate": 1e-2, "optimizer": "adamw", "checkpoint_every": 0,
                  "gradient_checkpointing": False, "device": "cpu"},
        "data": {"path": str(repeated_data)},
    }

    def build(**sections: Any) -> dict[str, Any]:
        return merged(base, sections)

    return build


@pytest.fixture
def tiny_config(tiny_trial: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
    """:func:`tiny_trial` validated into a TrialConfig: ``tiny_config(quant={"type": "fp4"})``."""
    from qsweep.orchestrator.trial.config import TrialConfig
    from qsweep.trainers.config_loading import validate

    def build(**sections: Any) -> Any:
        return validate(tiny_trial(**sections), TrialConfig)

    return build


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: connections to it are refused."""
    return free_port()


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Terminate a server started in its own session, with everything it spawned."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def launch_server(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, int]]]:
    """Start a server command on a free loopback port; it is stopped after the test.

    ``launch(lambda port: [...command...], "/health", cwd=...)`` returns (process, port) once
    ``http://127.0.0.1:<port>/health`` answers.
    """
    started: list[subprocess.Popen] = []

    def launch(command: Callable[[int], list[str]], health: str,
               **popen: Any) -> tuple[subprocess.Popen, int]:
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        with open(log, "w") as sink:
            process = subprocess.Popen(command(port), stdout=sink, stderr=subprocess.STDOUT,
                                       start_new_session=True, **popen)
        started.append(process)
        wait_for_http(f"http://127.0.0.1:{port}{health}", process, log)
        return process, port

    yield launch
    for process in started:
        stop(process)


def start_mlflow_server(root: Path, port: int, app: str | None = None,
                        env: dict[str, str] | None = None) -> subprocess.Popen:
    """A real ``mlflow server`` (SQLite backend and artifacts in ``root``, artifact proxy) on
    loopback ``port``, once it answers; stop it with :func:`stop` (and start it again on the same
    store and port to end an outage). ``app``: an MLflow server app (``basic-auth``), with its
    settings in ``env``."""
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"server-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               *(["--app-name", app] if app else [])]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    with open(log, "w") as sink:
        server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", server, log)
    return server


class RestartableServer:
    """An MLflow server of one test that can be stopped and started again on its store and port."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_mlflow_server(self.root, self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@pytest.fixture
def restartable_mlflow(tmp_path: Path) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path / "mlflow-server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server_in() -> Iterator[Callable[..., str]]:
    """Start a real MLflow server whose store lies in a folder of the test's choosing:
    ``start(root, app=None, env=None)`` (see :func:`start_mlflow_server`) returns its URI; it is
    stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(root: Path, app: str | None = None, env: dict[str, str] | None = None) -> str:
        port = free_port()
        started.append(start_mlflow_server(root, port, app, env))
        return f"http://127.0.0.1:{port}"

    yield start
    for server in started:
        stop(server)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` (SQLite backend, artifact proxy) on a free loopback port."""
    port = free_port()
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``ray start --head`` declaring 4 GPUs and 2 CPUs on loopback ports; its address.

    Port 6379 (Ray's default) belongs to Redis on this machine, so the head takes a free one.
    """
    port = free_port()
    # Token authentication stays on, as Ray ships it: this session's token, for the cluster and
    # for every driver the tests start.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex, RAY_USAGE_STATS_ENABLED="0")
    command = [str(BIN / "ray"), "start", "--head", f"--port={port}", "--num-gpus=4", "--num-cpus=2",
               "--include-dashboard=false", "--disable-usage-stats"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = re.search(r"--address='([^']+)'", done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"ray start failed:\n{done.stdout}\n{done.stderr}")
    try:
        yield found.group(1)
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, check=False)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server for one test (dropped afterwards), so no
    test sees another's studies."""
    import sqlalchemy

    admin_url = os.environ.get("QSWEEP_TEST_POSTGRES", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    name = f"qsweep_test_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.OperationalError as err:
        pytest.fail(f"the local PostgreSQL server is needed for this test: {err}")
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
