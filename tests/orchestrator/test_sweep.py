"""Sweeps on real Ray (a local cluster declaring 4 GPUs), real Optuna storage, a real MLflow server.

Each test runs the ``qsweep`` command line as a user would, on the tiny random Llama, and
reads the results back from Optuna's storage and through ``MlflowClient``. Faults are real:
the driver and a worker are SIGKILLed, and an out-of-memory error is a real
``torch.OutOfMemoryError`` raised by the trainer (``QSWEEP_FAULT_OOM``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from qsweep.orchestrator.sweep.planning import load_plan

QSWEEP = str(Path(sys.executable).parent / "qsweep")


@pytest.fixture
def sweep_spec(tmp_path: Path, tiny_trial, mlflow_server: str):
    """Write a sweep spec over the tiny model, recorded in the MLflow server."""
    def write(name: str, *, train: dict[str, Any] | None = None, **spec: Any) -> Path:
        data = {
            "name": name,
            "trial": tiny_trial(eval={"tasks": []}, train={"max_steps": 4, "grad_accum_steps": 1,
                                                           "checkpoint_every": 2, **(train or {})}),
            "storage": {"tracking": mlflow_server, "experiment": f"sweep-{name}", **spec.pop("storage", {})},
            **spec,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def qsweep(*args: str, root: Path, env: dict[str, str] | None = None,
           timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([QSWEEP, *args, "--root", str(root)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", **(env or {})}, timeout=timeout, check=False)
    print(done.stdout[-4000:], done.stderr[-4000:], sep="\n")
    return done


def optuna_trials(storage: str) -> dict[str, list[optuna.trial.FrozenTrial]]:
    """Every study of the storage, by name, with its trials."""
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage).trials
            for s in summaries}


def children(client: MlflowClient, parent_run_id: str) -> list[Any]:
    experiment = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def parent_of(client: MlflowClient, experiment: str) -> Any:
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              "tags.`qsweep.role` = 'sweep'")
    assert len(runs) == 1, "exactly one parent run per sweep"
    return runs[0]


def assert_exactly_once(root: Path, name: str, client: MlflowClient, experiment: str, cells: int,
                        seeds: int, storage: str | None = None) -> list[Any]:
    """Each (cell, seed) has one COMPLETE Optuna trial and one FINISHED child run; returns the runs."""
    storage = storage or f"sqlite:///{root / 'sweeps' / name / 'optuna.db'}"
    studies = optuna_trials(storage)
    assert len(studies) == cells * seeds
    for trials in studies.values():
        assert [t.state.name for t in trials] == ["COMPLETE"]
    parent = parent_of(client, experiment)
    runs = children(client, parent.info.run_id)
    assert len(runs) == cells * seeds
    cells_seeds = Counter((r.data.tags["qsweep.cell"], r.data.tags["qsweep.seed"]) for r in runs)
    assert set(cells_seeds.values()) == {1}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["qsweep.status"] for r in runs} == {"finished"}
    by_id = {r.info.run_id: r for r in runs}
    for study, trials in studies.items():
        run = by_id[trials[0].user_attrs["run_id"]]
        assert run.data.tags["qsweep.optuna_study"] == study and run.data.tags["qsweep.optuna_trial"] == "0"
        assert trials[0].user_attrs["outcome"]["status"] == "finished"
        assert trials[0].values == [run.data.metrics["train/final_loss"]]
    return runs


def wait_for(condition, timeout: float = 300, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def trial_dirs(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """(finished, unfinished-with-a-checkpoint) trial work directories of a sweep."""
    dirs = list((root / "sweeps" / name / "trials").glob("*"))
    finished = [d for d in dirs if (d / "adapter" / "adapter_model.safetensors").exists()]
    running = [d for d in dirs if d not in finished and list(d.glob("checkpoints/step-*/trainer_state.json"))]
    return finished, running


def checkpoints_settled(root: Path):
    """A condition: no trial of the sweep wrote or removed a checkpoint in the last 3 s."""
    def listing() -> set[str]:
        return {str(p) for p in root.glob("sweeps/*/trials/*/checkpoints/*")}

    def settled() -> bool:
        before = listing()
        time.sleep(3)
        return listing() == before

    return settled


def run_until_first_checkpoint(spec: Path, name: str, cluster: str, root: Path,
                               env: dict[str, str] | None = None) -> subprocess.Popen:
    """``qsweep run`` in the background, returned once a trial of it has written a checkpoint."""
    driver = subprocess.Popen([QSWEEP, "run", str(spec), "--address", cluster, "--root", str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "250", **(env or {})})
    wait_for(lambda: list(root.glob(f"sweeps/{name}/trials/*/checkpoints/step-*/trainer_state.json")),
             what="the trial's first checkpoint")
    return driver


def metric_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))


# Every trial starts a fresh worker process that imports torch, transformers, peft and
# bitsandbytes (about 30 s of CPU on a 2-core machine), so the tests below share sweeps:
# one grid sweep is also the killed-driver test, one sweep of faulty cells covers every failure.


def test_grid_sweep_survives_a_killed_driver_with_every_cell_exactly_once(
        sweep_spec, ray_cluster, mlflow_server, tmp_path: Path) -> None:
    """A 2x2 grid x 2 seeds; the driver is SIGKILLed once a trial has finished and another
    has a checkpoint; ``qsweep resume`` completes it: no trial lost, none run twice."""
    steps = 40
    spec = sweep_spec("grid", grid={"quant.type": ["nf4", "fp4"], "quant.double_quant": [True, False]},
                      seeds=[0, 1], concurrency=2, train={"max_steps": steps, "checkpoint_every": 2})
    root = tmp_path / "runs"
    driver = subprocess.Popen([QSWEEP, "run", str(spec), "--address", ray_cluster, "--root", str(root)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = MlflowClient(mlflow_server)

    def finished_runs() -> list[Any]:
        experiment = client.get_experiment_by_name("sweep-grid")
        return [] if experiment is None else client.search_runs(
            [experiment.experiment_id], "tags.`qsweep.role` = 'trial' and tags.`qsweep.status` = 'finished'")

    def two_checkpoints() -> list[Path]:
        return [d for d in trial_dirs(root, "grid")[1] if len(list(d.glob("checkpoints/step-*"))) >= 2]

    wait_for(lambda: two_checkpoints() and finished_runs(),
             what="a finished trial and another's two checkpoints")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    wait_for(checkpoints_settled(root), what="the killed driver's workers to stop")
    interrupted = {d.name for d in trial_dirs(root, "grid")[1]}
    finished_before = finished_runs()
    # The newest checkpoint of each interrupted trial that has an older one is damaged: cut in
    # half, or one bit flipped (the same size). Resume falls back to the older one and says so.
    damaged = {}
    for i, directory in enumerate(sorted(two_checkpoints())):
        newest = sorted(directory.glob("checkpoints/step-*"))[-1]
        if i % 2 == 0:
            (newest / "adapter_model.safetensors").write_bytes(
                (newest / "adapter_model.safetensors").read_bytes()[:100])
        else:
            data = bytearray((newest / "optimizer.pt").read_bytes())
            data[len(data) // 2] ^= 1
            (newest / "optimizer.pt").write_bytes(bytes(data))
        damaged[directory.name] = newest.name
    assert damaged

    done = qsweep("resume", "grid", "--address", ray_cluster, root=root)
    assert done.returncode == 0, done.stderr
    # Every trial recorded finished is taken as ended, not run again. Another may finish between
    # the kill and the listing above (its worker outlives the driver for a moment): at least.
    ended = re.search(r"resuming: (\d+) trials already ended", done.stdout)
    assert ended and int(ended.group(1)) >= len(finished_before) >= 1, done.stdout[:2000]
    runs = assert_exactly_once(root, "grid", client, "sweep-grid", cells=4, seeds=2)
    labels = Counter((r.data.tags["qsweep.axis.quant.type"], r.data.tags["qsweep.axis.quant.double_quant"])
                     for r in runs)
    assert labels == {(t, d): 2 for t in ("nf4", "fp4") for d in ("true", "false")}
    # named by what varies, then the seed; the axes as params (parallel coordinates, grouping)
    assert sorted(r.info.run_name for r in runs) == sorted(
        f"{t} · {d} · seed {s}" for t in ("nf4", "fp4") for d in ("true", "false") for s in (0, 1))
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert params["axis.quant.type"] == tags["qsweep.axis.quant.type"]
        assert params["axis.quant.double_quant"] == tags["qsweep.axis.quant.double_quant"]
        for key in run.data.metrics:  # every metric, through kills and resumes: no (metric, step) twice
            logged = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(logged) == len(set(logged)), (key, logged)
    # sampled every 5 s while a trial computes, and at its end
    assert all("system/cpu_utilization_percentage" in r.data.metrics for r in runs)
    resumed = {f"{r.data.tags['qsweep.cell']}-seed{r.data.tags['qsweep.seed']}-t0": r for r in runs
               if int(r.data.tags.get("qsweep.resumed_from_step", 0)) > 0}
    assert resumed and set(resumed) <= interrupted  # interrupted trials continued from checkpoints
    for name, checkpoint in damaged.items():  # an intact older checkpoint took over, and the run says so
        assert resumed[name].data.tags["qsweep.damaged_checkpoints"].startswith(f"{checkpoint}: ")
    for run in runs:  # complete histories: no step lost, none logged twice
        assert metric_steps(client, run.info.run_id) == list(range(1, steps + 1))
    for log in (root / "sweeps" / "grid" / "trials").glob("*/trial.log"):  # Ray gave each a GPU
        assert re.search(r"CUDA_VISIBLE_DEVICES=[0-3]\b", log.read_text()), log
    parent = parent_of(client, "sweep-grid")
    assert parent.info.status == "FINISHED" and parent.data.params["sweep.trials"] == "8"
    assert {"spec.redacted.yaml", "plan.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    status = qsweep("status", "grid", root=root)
    assert status.returncode == 0 and status.stdout.count(" finished ") == 8 and "8 finished" in status.stdout

    # Where the time went: every trial's phases (also of those that ended while no driver
    # listened, read back from their runs), per trial in `status --phases`, and the GPU use of
    # the driver's trials at the end of the run.
    studies = optuna_trials(f"sqlite:///{root / 'sweeps' / 'grid' / 'optuna.db'}")
    for (trial,) in studies.values():
        phases = trial.user_attrs["outcome"]["phases"]
        assert phases["load"] > 0 and phases["train"] > 0 and phases["total"] >= phases["compute"] > 0
    # (Here two half-GPU trials share a declared GPU but run on the CPU, where no lease keeps
    # their compute apart: the figures are only checked for being reported.)
    usage = re.search(r"GPU use: (\d+) trial runs on 1 GPU, held for [\d,]+ GPU-s: ([\d.]+)% of it training",
                      done.stdout)
    assert usage and 1 <= int(usage.group(1)) <= 8 and float(usage.group(2)) > 0, done.stdout[-2000:]
    assert re.search(r"makespan \d+:\d\d against an ideal of \d+:\d\d \(\d+\.\d\dx", done.stdout)
    assert "median seconds per trial: start" in done.stdout
    metrics = parent_of(client, "sweep-grid").data.metrics
    assert metrics["sweep/busy_share"] == pytest.approx(float(usage.group(2)) / 100, abs=0.001)
    assert metrics["sweep/makespan_s"] > 0 and metrics["sweep/ideal_makespan_s"] > 0
    phases = qsweep("status", "grid", "--phases", root=root)
    rows = [line.split() for line in phases.stdout.splitlines() if line.lstrip().startswith("quant.type=")]
    assert phases.returncode == 0 and len(rows) == 8  # one row per trial
    header = next(line.split() for line in phases.stdout.splitlines() if line.split()[:2] == ["cell", "seed"])
    assert header[-2:] == ["compute", "total"] and {"start", "load", "train"} <= set(header)
    for row in rows:  # every phase in seconds; total >= compute > 0
        total, compute = float(row[-1]), float(row[-2])
        assert total >= compute > 0


def test_failures_worker_killed_out_of_memory_and_an_exception(sweep_spec, ray_cluster, mlflow_server,
                                                               tmp_path: Path) -> None:
    """Three cells: one whose worker is SIGKILLed mid-trial (Ray retries it from its checkpoint),
    one that runs out of memory at micro-batch 4 (a real torch.OutOfMemoryError from the trainer),
    one with broken data (it fails; the sweep goes on)."""
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "response": "r"}\n{not json\n')
    spec = sweep_spec("faults", retries=1, concurrency=2,
                      train={"micro_batch_size": 2, "grad_accum_steps": 2, "max_steps": 4}, grid={
                          "case": {"killed": {"train.max_steps": 40, "train.checkpoint_every": 2},
                                   "oom": {"train.micro_batch_size": 4, "train.grad_accum_steps": 1},
                                   "broken": {"data.path": str(broken)}}})
    root = tmp_path / "runs"
    driver = subprocess.Popen([QSWEEP, "run", str(spec), "--address", ray_cluster, "--root", str(root)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "QSWEEP_FAULT_OOM": "step=2,min_micro_batch=4"})
    (killed_cell,) = [c for c in load_plan(spec).cells if c.labels["case"] == "killed"]
    workdir = root / "sweeps" / "faults" / "trials" / f"{killed_cell.key}-seed0-t0"
    wait_for(lambda: list(workdir.glob("checkpoints/step-*/trainer_state.json")),
             what="a checkpoint of the trial to kill")
    pid_file = workdir / "worker.pid"
    first_worker = int(pid_file.read_text())
    os.kill(first_worker, signal.SIGKILL)
    out, err = driver.communicate(timeout=900)
    print(out[-3000:], err[-3000:])
    assert driver.returncode == 1  # a trial failed; the sweep still ran every one
    client = MlflowClient(mlflow_server)
    parent = parent_of(client, "sweep-faults")
    runs = {r.data.tags["qsweep.axis.case"]: r for r in children(client, parent.info.run_id)}
    assert len(runs) == 3
    studies = optuna_trials(f"sqlite:///{root / 'sweeps' / 'faults' / 'optuna.db'}")

    killed = runs["killed"]
    assert int(pid_file.read_text()) != first_worker  # a new worker process ran the retry
    assert killed.data.tags["qsweep.status"] == "finished" and killed.info.status == "FINISHED"
    assert int(killed.data.tags["qsweep.resumed_from_step"]) >= 2
    assert metric_steps(client, killed.info.run_id) == list(range(1, 41))

    oom = runs["oom"]
    assert oom.data.tags["qsweep.status"] == "finished" and oom.info.status == "FINISHED"
    assert oom.data.tags["qsweep.oom_retries"] == "1"
    adjusted = oom.data.tags["qsweep.adjusted"]
    assert "train.micro_batch_size 4 -> 2" in adjusted and "train.grad_accum_steps 1 -> 2" in adjusted
    assert "injected by QSWEEP_FAULT_OOM" in adjusted
    (trial,) = studies[oom.data.tags["qsweep.optuna_study"]]
    assert trial.state.name == "COMPLETE"
    assert trial.user_attrs["adjust"] == {"train.micro_batch_size": 2, "train.grad_accum_steps": 2}

    failed = runs["broken"]
    assert failed.data.tags["qsweep.status"] == "failed" and failed.info.status == "FAILED"
    assert "not valid JSON" in failed.data.tags["qsweep.reason"]
    trace = client.download_artifacts(failed.info.run_id, "traceback.txt", str(tmp_path))
    assert "DataError" in Path(trace).read_text()
    (trial,) = studies[failed.data.tags["qsweep.optuna_study"]]
    assert trial.state.name == "FAIL"

    # The data fixed, `resume --retry-failed` runs the failed trial again: the same MLflow run
    # finishes, Optuna keeps the failed trial and adds its retry; nothing else runs again.
    broken.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "q", "response": "s"}\n')
    done = qsweep("resume", "faults", "--address", ray_cluster, "--retry-failed", root=root)
    assert done.returncode == 0, done.stderr
    assert "resuming: 2 trials already ended, 0 interrupted continue from their checkpoints, 1 failed run " \
           "again" in " ".join(done.stdout.split())
    retried = client.get_run(failed.info.run_id)
    assert retried.data.tags["qsweep.status"] == "finished" and retried.info.status == "FINISHED"
    assert retried.data.tags["qsweep.retried_from_trial"] == "0"
    assert retried.data.tags["qsweep.optuna_trial"] == "1"
    assert len(children(client, parent.info.run_id)) == 3
    studies = optuna_trials(f"sqlite:///{root / 'sweeps' / 'faults' / 'optuna.db'}")
    study = failed.data.tags["qsweep.optuna_study"]
    first, retry = studies[study]
    assert (first.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.user_attrs["retry_of"] == 0 and retry.user_attrs["run_id"] == failed.info.run_id
    assert retry.values == [retried.data.metrics["train/final_loss"]]
    assert all(len(trials) == 1 for name, trials in studies.items() if name != study)
    status = qsweep("status", "faults", root=root)
    assert "3 finished" in status.stdout and "failed" not in status.stdout.split("MLflow parent run")[0]


def test_tpe_search_with_a_median_pruner_prunes(sweep_spec, ray_cluster, mlflow_server, postgres_url,
                                                tmp_path: Path) -> None:
    """On PostgreSQL storage (the other sweeps use the default SQLite). Built to be prunable: the
    first two trials learn fast (learning rate 5e-2), the third is queued with 1e-8 — its loss
    stays put, behind the median of the finished trials at its first report (the third starts
    only when a slot frees, so at least one has finished); TPE chooses the fourth."""
    search = {"n_trials": 4, "sampler": "tpe",
              "space": {"train.learning_rate": {"type": "float", "low": 1e-8, "high": 1e-1, "log": True}},
              "enqueue": [{"train.learning_rate": 5e-2}, {"train.learning_rate": 5e-2},
                          {"train.learning_rate": 1e-8}],
              "pruner": {"type": "median", "report_every": 2, "n_startup_trials": 1}}
    spec = sweep_spec("pruned", train={"max_steps": 12}, concurrency=2, storage={"optuna": postgres_url},
                      search=search)
    root = tmp_path / "runs"
    done = qsweep("run", str(spec), "--address", ray_cluster, root=root)
    assert done.returncode == 0, done.stderr
    (trials,) = optuna_trials(postgres_url).values()
    states = Counter(t.state.name for t in trials)
    assert states["PRUNED"] >= 1 and states["COMPLETE"] >= 2 and sum(states.values()) == 4
    pruned = next(t for t in trials if t.state.name == "PRUNED")
    assert pruned.number == 2 and pruned.params["train.learning_rate"] == 1e-8
    assert pruned.intermediate_values  # the pruner decided on reported values
    client = MlflowClient(mlflow_server)
    run = client.get_run(pruned.user_attrs["run_id"])
    assert run.data.tags["qsweep.status"] == "pruned" and run.info.status == "KILLED"
    assert "pruned at step" in run.data.tags["qsweep.reason"]
    assert max(metric_steps(client, run.info.run_id)) < 12


def test_broken_specs_and_unreachable_services_start_nothing(sweep_spec, closed_port,
                                                            tmp_path: Path) -> None:
    root = tmp_path / "runs"
    bad = sweep_spec("bad", grid={"quant.type": ["nf4", "int4"]}, seeds=[])
    done = qsweep("run", str(bad), root=root)
    assert done.returncode == 2
    assert "grid.quant.type[1]: must be one of" in done.stderr
    assert "seeds: must list at least one seed" in done.stderr
    down = sweep_spec("down", storage={"tracking": f"http://u:hunter2@127.0.0.1:{closed_port}"})
    done = qsweep("run", str(down), root=root)
    assert done.returncode == 4 and "cannot reach the MLflow tracking server" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    no_db = sweep_spec("no-db", storage={"optuna": f"postgresql+psycopg2://u:hunter2@127.0.0.1:{closed_port}/x"})
    done = qsweep("run", str(no_db), root=root)
    assert done.returncode == 4 and "cannot use the Optuna storage" in done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (root / "sweeps").exists()  # nothing was created, no Ray was started


def listening_addresses(pid: int) -> set[tuple[str, str]]:
    """(process name, address) of every socket that ``pid`` and its descendants listen on."""
    import psutil

    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    names = {p.pid: p.name() for p in family if p.is_running()}
    return {(names[c.pid], c.laddr.ip) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in names}


def test_a_local_cluster_listens_on_loopback_only(sweep_spec, tmp_path: Path) -> None:
    """Without --address, qsweep run starts a private Ray cluster whose every server (GCS,
    raylet, workers, agents) binds 127.0.0.1, not the machine's network address; its token
    authentication is on without Ray's banner about it."""
    spec = sweep_spec("loopback", train={"max_steps": 6}, grid={"lora.r": [4]}, seeds=[0],
                      resources={"gpus": 0, "cpus": 1})
    switches = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in switches}
    driver = subprocess.Popen([QSWEEP, "run", str(spec), "--num-cpus", "2", "--root", str(tmp_path / "runs")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seen: set[tuple[str, str]] = set()
    while driver.poll() is None:
        seen |= listening_addresses(driver.pid)
        time.sleep(0.5)
    err = driver.stderr.read()
    assert driver.returncode == 0, err[-3000:]
    assert "Token authentication" not in err  # on, and no banner about it (issue 13)
    servers = {name for name, _ in seen}
    assert {"gcs_server", "raylet"} <= servers, seen
    exposed = {(name, ip) for name, ip in seen if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")}
    assert not exposed, f"listening beyond loopback: {sorted(exposed)}"


def test_credentials_work_against_a_server_that_enforces_them_and_never_reach_the_disk(
        sweep_spec, ray_cluster, mlflow_server_in, postgres_url, tmp_path: Path, monkeypatch) -> None:
    """A spec's Optuna URL and MLflow server URI carry passwords; the MLflow server is MLflow's
    basic-auth app, which refuses anyone without the password.

    * A wrong MLflow password is one clear error (exit code 2, the key named) before anything
      starts.
    * The right ones run the sweep; the sweep directory keeps them masked, in files only their
      owner reads.
    * The driver is killed mid-trial. Resume without the passwords says which variable to set;
      with them from a credentials file (``--credentials``; refused while others may read it),
      the trial, on a cluster that never saw them, finishes in its run.
    * No password reaches any output or any file of the runs root."""
    secret = f"pw-{uuid.uuid4().hex[:12]}"
    config = tmp_path / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                      f"database_uri = sqlite:///{tmp_path / 'users.db'}\nadmin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    settings = {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": secret,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex}
    mlflow_uri = mlflow_server_in(tmp_path / "auth-mlflow", app="basic-auth", env=settings)
    with pytest.raises(Exception, match="401|[Uu]nauthorized|credentials"):
        MlflowClient(mlflow_uri).search_experiments()  # the server does enforce it
    root = tmp_path / "runs"

    wrong = sweep_spec("authwrong", seeds=[0],
                       storage={"tracking": mlflow_uri.replace("http://", "http://admin:wrong-pw-x7@")})
    done = qsweep("run", str(wrong), "--address", ray_cluster, root=root)
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "storage.tracking" in err and "refused the credentials" in err and "Traceback" not in err
    assert "wrong-pw-x7" not in done.stdout + done.stderr
    assert not (root / "sweeps" / "authwrong" / "optuna.db").exists()

    optuna_url = postgres_url.replace("postgres@", f"postgres:{secret}@")
    tracking = mlflow_uri.replace("http://", f"http://admin:{secret}@")
    spec = sweep_spec("secret", seeds=[0], train={"max_steps": 40, "checkpoint_every": 2},
                      storage={"optuna": optuna_url, "tracking": tracking})
    unset = {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": "", "QSWEEP_OPTUNA_URL": ""}
    driver = run_until_first_checkpoint(spec, "secret", ray_cluster, root, unset)
    driver.kill()
    out, err = driver.communicate(timeout=60)
    sweep = root / "sweeps" / "secret"
    snapshot = yaml.safe_load((sweep / "spec.yaml").read_text())["storage"]
    assert snapshot["optuna"] == postgres_url.replace("postgres@", "postgres:***@")
    assert snapshot["tracking"] == mlflow_uri.replace("http://", "http://admin:***@")
    for name in ("spec.yaml", "sweep.json"):
        assert (sweep / name).stat().st_mode & 0o777 == 0o600, name

    resume = ["resume", "secret", "--address", ray_cluster]
    no_password = qsweep(*resume, root=root, env=unset)
    said = " ".join(no_password.stderr.split())
    assert no_password.returncode == 2 and "storage.optuna: the sweep directory keeps" in said
    assert "set QSWEEP_OPTUNA_URL to the whole URL" in said
    credentials = tmp_path / "stores.env"
    credentials.write_text(f"QSWEEP_OPTUNA_URL={optuna_url}\nMLFLOW_TRACKING_PASSWORD={secret}\n")
    credentials.chmod(0o644)
    refused = qsweep(*resume, "--credentials", str(credentials), root=root, env=unset)
    assert refused.returncode == 2 and "others may read it (mode 0644): chmod 600" in refused.stderr
    credentials.chmod(0o600)
    done = qsweep(*resume, "--credentials", str(credentials), root=root, env=unset)
    assert done.returncode == 0, done.stderr
    outputs = [out, err] + [p.stdout + p.stderr for p in (no_password, refused, done)]
    assert not [text for text in outputs if secret in text]
    leaked = [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked, leaked
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    client = MlflowClient(mlflow_uri)
    (run,) = assert_exactly_once(root, "secret", client, "sweep-secret", cells=1, seeds=1, storage=optuna_url)
    assert metric_steps(client, run.info.run_id) == list(range(1, 41))


def test_a_damaged_or_locked_optuna_database_is_one_clear_error_and_resume_works_after(
        sweep_spec, ray_cluster, tmp_path: Path) -> None:
    spec = sweep_spec("damaged", seeds=[0])
    root = tmp_path / "runs"
    assert qsweep("run", str(spec), "--address", ray_cluster, root=root).returncode == 0
    database = root / "sweeps" / "damaged" / "optuna.db"
    backup = tmp_path / "optuna.backup"
    shutil.copy(database, backup)
    os.truncate(database, database.stat().st_size - 4096)  # its last page cut
    for command in (["status", "damaged"], ["resume", "damaged", "--address", ray_cluster]):
        done = qsweep(*command, root=root)
        err = " ".join(done.stderr.split())
        assert done.returncode == 4, done.stderr
        assert f"the Optuna database {database} is damaged (SQLite: database disk image is malformed)" in err
        assert "restore it from a backup" in err and "Traceback" not in err
    shutil.copy(backup, database)
    holder = sqlite3.connect(database)  # another program holds it, exclusively
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        done = qsweep("status", "damaged", root=root)
    finally:
        holder.rollback()
        holder.close()
    err = " ".join(done.stderr.split())
    assert done.returncode == 4 and f"the Optuna database {database} is locked by another program" in err
    done = qsweep("resume", "damaged", "--address", ray_cluster, root=root)
    assert done.returncode == 0 and "1 trials already ended" in done.stdout


@contextlib.contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` with ``options`` (mounting needs root: skipped where refused)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_read_only_runs_root_is_one_clear_error(sweep_spec, tmp_path: Path) -> None:
    spec = sweep_spec("readonly", storage={"tracking": None})
    with tmpfs(tmp_path / "ro", "size=1m,ro") as mount:
        done = qsweep("run", str(spec), root=mount / "runs")
    err = " ".join(done.stderr.split())
    assert done.returncode == 4 and "Read-only file system" in err and "choose a writable --root" in err
    assert "Traceback" not in err


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs."""
    with tmpfs(tmp_path / "disk", "size=16m") as mount:
        yield mount


def test_a_disk_that_fills_up_mid_sweep_stops_it_clearly_and_resume_finishes_it(
        sweep_spec, ray_cluster, mlflow_server, small_disk: Path, tmp_path: Path) -> None:
    """The runs root on a small disk: once the trial has a checkpoint, the disk is filled; the
    sweep ends with exit code 4 and what to do; with the space freed, resume finishes the trial
    exactly once, from its checkpoint, with no metric step logged twice."""
    spec = sweep_spec("full", seeds=[0], train={"max_steps": 60, "checkpoint_every": 2})
    root = small_disk / "runs"
    driver = run_until_first_checkpoint(spec, "full", ray_cluster, root)
    filler = fill(small_disk)
    out, err = driver.communicate(timeout=600)
    message = " ".join(err.split())
    assert driver.returncode == 4, out[-2000:] + err[-2000:]
    assert "error: the disk is full (" in message and "Traceback" not in message
    assert ("What was recorded before is kept: free space, then run "
            f"`qsweep resume full --root {root}`") in message
    filler.unlink()
    done = qsweep("resume", "full", "--address", ray_cluster, root=root)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(mlflow_server)
    (run,) = assert_exactly_once(root, "full", client, "sweep-full", cells=1, seeds=1)
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), key
    assert metric_steps(client, run.info.run_id) == list(range(1, 61))


def fill(disk: Path) -> Path:
    """Write zeros to ``disk`` until it is full; the file that holds them."""
    filler = disk / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as sink:
        try:
            while True:
                sink.write(b"\0" * (1 << 16))
                sink.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


def test_an_mlflow_server_that_cannot_write_its_store_stops_the_sweep_clearly_and_resume_finishes_it(
        sweep_spec, ray_cluster, small_disk: Path, mlflow_server_in, tmp_path: Path) -> None:
    """The MLflow server's own store (SQLite and artifacts) on a small disk that fills up while
    a trial trains: the server answers every write with an error, the trial keeps training, and
    the sweep ends with exit code 4, naming the server; so does the sweep grown by a seed before
    the cause is fixed, at the driver's own first write to MLflow; with space freed, the sweep
    finishes each trial exactly once (the first from its checkpoint), every step's metrics in
    MLflow once. The trials get the driver's settings
    of MLflow's client (no retries) and of the wait for MLflow (5 s instead of 10 minutes)."""
    uri = mlflow_server_in(small_disk / "mlflow")
    spec = sweep_spec("storefull", seeds=[0], train={"max_steps": 60, "checkpoint_every": 2},
                      storage={"tracking": uri})
    root = tmp_path / "runs"
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
             "QSWEEP_METRICS_WAIT_S": "5"}
    driver = run_until_first_checkpoint(spec, "storefull", ray_cluster, root, quick)
    filler = fill(small_disk)
    out, err = driver.communicate(timeout=600)
    message = " ".join(err.split())
    assert driver.returncode == 4, out[-3000:] + err[-3000:]
    assert f"the MLflow server at {uri} answered HTTP 5" in message, message
    assert "it could not store what was sent" in message
    assert "Traceback" not in message
    assert f"then run `qsweep resume storefull --root {root}`" in message
    # the driver's own writes: the sweep grown by a seed before the cause is fixed stops when
    # the driver creates the new trial's run
    grown = sweep_spec("storefull", seeds=[0, 1], train={"max_steps": 60, "checkpoint_every": 2},
                       storage={"tracking": uri})
    again = qsweep("run", str(grown), "--address", ray_cluster, root=root, env=quick)  # ~8 s: before
    # any trial's worker has imported torch, so the write that failed is the driver's
    message = " ".join(again.stderr.split())
    assert again.returncode == 4 and "Traceback" not in message, message
    assert f"the MLflow server at {uri} answered HTTP 5" in message
    assert "/api/2.0/mlflow/runs/" in message
    filler.unlink()
    done = qsweep("run", str(grown), "--address", ray_cluster, root=root, env=quick)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(uri)
    runs = assert_exactly_once(root, "storefull", client, "sweep-storefull", cells=1, seeds=2)
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), key
        assert metric_steps(client, run.info.run_id) == list(range(1, 61))


def assert_consistent_so_far(root: Path, name: str, client: MlflowClient, experiment: str,
                             context: str) -> None:
    """What must hold after any kill: each (cell, seed) has at most one Optuna trial (running or
    complete), at most one MLflow run, and no run holds a (metric, step) twice."""
    database = root / "sweeps" / name / "optuna.db"  # none yet: killed before it was created
    for study, trials in (optuna_trials(f"sqlite:///{database}") if database.exists() else {}).items():
        states = {t.state.name for t in trials}
        assert len(trials) <= 1 and states <= {"RUNNING", "COMPLETE"}, (context, study, states)
    found = client.get_experiment_by_name(experiment)
    runs = [] if found is None else client.search_runs([found.experiment_id], "tags.`qsweep.role` = 'trial'")
    slots = Counter((r.data.tags["qsweep.cell"], r.data.tags["qsweep.seed"]) for r in runs)
    assert set(slots.values()) <= {1}, (context, slots)
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (context, run.info.run_name, key, steps)
    directories = Counter(d.name.rsplit("-t", 1)[0] for d in (root / "sweeps" / name / "trials").glob("*"))
    assert set(directories.values()) <= {1}, (context, directories)


def test_chaos_the_driver_killed_at_random_moments_loses_and_repeats_nothing(
        sweep_spec, ray_cluster, mlflow_server, tmp_path: Path) -> None:
    """The driver of one small sweep is SIGKILLed at seeded random moments (replay a failure
    with QSWEEP_CHAOS_SEED=<seed>); after each kill, nothing is duplicated; a last resume
    finishes it with every (cell, seed) exactly once and every metric step logged once."""
    import random

    seed = int(os.environ.get("QSWEEP_CHAOS_SEED", "20261127"))
    rng = random.Random(seed)
    steps = 16
    spec = sweep_spec("chaos", grid={"quant.type": ["nf4", "fp4"]}, seeds=[0, 1], concurrency=2,
                      train={"max_steps": steps, "checkpoint_every": 2})
    root = tmp_path / "runs"
    client = MlflowClient(mlflow_server)
    command = [QSWEEP, "run", str(spec), "--address", ray_cluster, "--root", str(root)]
    killed = 0
    for kill in range(4):
        moment = rng.uniform(3.0, 25.0)
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            driver.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            killed += 1
        wait_for(checkpoints_settled(root), what="the killed driver's workers to stop")
        context = f"seed {seed}, kill {kill} at {moment:.1f} s"
        assert_consistent_so_far(root, "chaos", client, "sweep-chaos", context)
    assert killed >= 2, f"seed {seed}: the sweep ended before most kills; choose later moments"
    done = qsweep("resume", "chaos", "--address", ray_cluster, root=root)
    assert done.returncode == 0, (seed, done.stderr)
    runs = assert_exactly_once(root, "chaos", client, "sweep-chaos", cells=2, seeds=2)
    for run in runs:
        assert metric_steps(client, run.info.run_id) == list(range(1, steps + 1)), (seed, run.info.run_name)
    assert_consistent_so_far(root, "chaos", client, "sweep-chaos", f"seed {seed}, at the end")


def descendants(pid: int) -> list[tuple[int, float]]:
    """(pid, start time) of every descendant process of ``pid``."""
    import psutil

    try:
        return [(p.pid, p.create_time()) for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def still_running(processes: list[tuple[int, float]]) -> list[str]:
    import psutil

    alive = []
    for pid, started in processes:
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started) < 1e-3 and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{pid} {process.name()}")
        except psutil.NoSuchProcess:
            pass
    return alive


def test_no_process_of_a_local_cluster_outlives_ctrl_c_or_the_next_run_after_a_kill(
        sweep_spec, tmp_path: Path) -> None:
    """Ctrl-C stops the local cluster with the driver; after a SIGKILLed driver, the next run of
    the sweep stops what the killed one left before it starts its own."""
    spec = sweep_spec("leftovers", train={"max_steps": 40, "checkpoint_every": 10}, seeds=[0],
                      resources={"gpus": 0, "cpus": 1})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    root = tmp_path / "runs"
    command = [QSWEEP, "run", str(spec), "--num-cpus", "2", "--root", str(root)]

    def start_a_trial() -> tuple[subprocess.Popen, list[tuple[int, float]]]:
        for stale in root.glob("sweeps/leftovers/trials/*/worker.pid"):
            stale.unlink()
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for(lambda: list(root.glob("sweeps/leftovers/trials/*/worker.pid")), what="a running trial")
        time.sleep(2)
        cluster = descendants(driver.pid)
        assert len(cluster) >= 3, cluster  # GCS, raylet, a worker at least
        return driver, cluster

    driver, cluster = start_a_trial()
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) == 130
    wait_for(lambda: not still_running(cluster), timeout=30, what="the cluster to stop with Ctrl-C")

    driver, cluster = start_a_trial()
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    done = subprocess.run([QSWEEP, "resume", "leftovers", "--num-cpus", "2", "--root", str(root)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not still_running(cluster), still_running(cluster)
    assert not (root / "sweeps" / "leftovers" / "local_cluster.json").exists()
