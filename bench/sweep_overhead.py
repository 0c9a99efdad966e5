"""Orchestration overhead of a large sweep: 1,000 trivial trials on a local Ray cluster of 64 GPUs.

The real driver (``qsweep.orchestrator.sweep.driver.SweepDriver``: Optuna ask/tell in SQLite, an MLflow child
run per trial on a real ``mlflow server``, Ray tasks that each ask for one declared GPU) runs a
sweep whose trial function only sleeps ``--trial-s`` seconds and returns a loss.
Whatever the makespan adds to the ideal — ceil(trials / 64) x trial time — is orchestration:
scheduling, worker start-up, Optuna and MLflow.

Two placements are measured in the same run: ``fresh`` (qsweep's: one worker process per
trial, so a trial's GPU memory returns to the pool when it ends) and ``reused`` (Ray's default
worker reuse, the reference with no process start-up per trial).

    python bench/sweep_overhead.py --trials 1000 --gpus 64 --trial-s 1.0 \
        --out bench/results/sweep_overhead.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def trivial_trial(request, report=None):
    """Stands in for training: sleep, then report a loss (no torch, no MLflow client imported)."""
    import random
    import time as clock

    from qsweep.orchestrator.trial.worker import TrialOutcome

    started = clock.perf_counter()
    clock.sleep(float(os.environ.get("BENCH_TRIAL_S", "1.0")))
    loss = random.Random(request.key).random()
    return TrialOutcome(request.key, "finished", "slept", metrics={"train/final_loss": loss},
                        seconds=clock.perf_counter() - started)


def spec_file(directory: Path, trials: int, name: str) -> Path:
    cells = 10
    per_cell = math.ceil(trials / cells)
    spec = {
        "name": name,
        "trial": {"model": {"name": "smollm2-135m-instruct"}, "data": {"name": "mmlu-heldout"},
                  "eval": {"tasks": []}},
        "grid": {"lora.r": [4, 8, 12, 16, 24, 32, 40, 48, 56, 64][:cells]},
        "seeds": [0],
        "search": {"n_trials": per_cell, "sampler": "random",
                   "space": {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3,
                                                     "log": True}}},
    }
    import yaml

    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_mlflow(directory: Path) -> tuple[subprocess.Popen, str]:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{directory / 'mlflow.db'}",
         "--artifacts-destination", str(directory / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("mlflow server did not start")


def run_once(args: argparse.Namespace, placement: str, work: Path, tracking: str) -> dict:
    import ray
    from qsweep.orchestrator.adapters import cluster as cluster_module
    from qsweep.orchestrator.adapters.cluster import Cluster
    from qsweep.orchestrator.sweep.launch import prepare_sweep
    from qsweep.orchestrator.sweep.planning import load_plan

    if placement == "reused":
        # The reference: Ray's default worker reuse (no new process per trial).
        cluster_module._trial_task = ray.remote(cluster_module._run)
    else:
        cluster_module._trial_task = ray.remote(max_calls=1)(cluster_module._run)
    plan = load_plan(spec_file(work, args.trials, f"bench-{placement}"), [f"storage.tracking={tracking}"])
    prepared = prepare_sweep(plan, work / "runs")
    started = time.perf_counter()
    driver = prepared.connect(None, args.gpus, args.gpus, None, trivial_trial)
    connected = time.perf_counter() - started
    # The driver's own time: the makespan less its waits for trials to end.
    waited = 0.0
    wait = driver.cluster.wait

    def timed_wait(refs, timeout):
        nonlocal waited
        t0 = time.perf_counter()
        try:
            return wait(refs, timeout)
        finally:
            waited += time.perf_counter() - t0

    driver.cluster.wait = timed_wait
    t0 = time.perf_counter()
    tally = driver.run()
    makespan = time.perf_counter() - t0
    Cluster.shutdown()
    ideal = math.ceil(plan.total_trials / driver.concurrency) * args.trial_s
    return {
        "placement": placement, "trials": plan.total_trials, "finished": tally.done.get("finished", 0),
        "concurrency": driver.concurrency, "trial_s": args.trial_s, "cluster_start_s": round(connected, 2),
        "makespan_s": round(makespan, 2), "ideal_makespan_s": ideal,
        "added_s_per_trial": round((makespan - ideal) / plan.total_trials, 4),
        "driver_s_per_trial": round((makespan - waited) / plan.total_trials, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--gpus", type=int, default=64, help="GPUs (and CPUs) the local cluster declares")
    parser.add_argument("--trial-s", type=float, default=1.0)
    parser.add_argument("--placements", default="fresh,reused")
    parser.add_argument("--tracking", choices=["server", "sqlite"], default="server",
                        help="an mlflow server on loopback (default), or a local SQLite store")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ["BENCH_TRIAL_S"] = str(args.trial_s)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = None
        if args.tracking == "server":
            server, tracking = start_mlflow(work)
        try:
            for placement in args.placements.split(","):
                if args.tracking == "sqlite":
                    tracking = f"sqlite:///{work / placement / 'mlflow.db'}"
                    (work / placement).mkdir()
                row = run_once(args, placement, work, tracking)
                row["tracking"] = args.tracking
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    args.out.write_text(json.dumps({"results": rows}, indent=1) + "\n")
        finally:
            if server is not None:
                server.terminate()
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}, "results": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
