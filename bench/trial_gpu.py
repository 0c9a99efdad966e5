"""One GPU trial end to end through ``qsweep trial``: where its time goes, phase by phase.

Each variant runs ``qsweep trial bench/trial-8b.yaml`` in a fresh process and runs root, as a
user would, and reads the trial's phases back from its MLflow run (``time/*`` metrics; for a
qsweep without them, the times its metrics were logged):

* ``after`` — this checkout as it is;
* ``omp1`` — the same with ``OMP_NUM_THREADS=1``, which is what Ray gives a trial that asks for
  one CPU (``resources.cpus: 1``): the CPU-side work of a GPU trial on one thread;
* ``before`` — another checkout (``--before DIR``, e.g. a ``git worktree`` of an older commit).

On a GPU machine prepared by ``bench/gpu_setup.sh``::

    python3 bench/trial_gpu.py --variants after,omp1 --out trial.json
    python3 bench/trial_gpu.py --variants before --before .bench-before --out before.json
    python3 bench/trial_gpu.py --variants after --profile --out trial.json   # py-spy, 10 Hz
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import phases_of_run, python, python_path, run_timed  # noqa: E402
from workers import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VARIANT_ENV = {"after": {}, "omp1": {"OMP_NUM_THREADS": "1"}, "before": {}}


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    from mlflow.tracking import MlflowClient

    project = Path(args.before).resolve() if variant == "before" else ROOT
    runs = Path(args.work) / variant
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    command = [python(), "-m", "qsweep.orchestrator.cli", "trial", str(Path(args.config).resolve()),
               *args.overrides, "--root", str(runs)]
    if args.profile and variant == "after":
        command = ["py-spy", "record", "-r", "10", "-f", "raw", "--nonblocking", "-o",
                   str(Path(args.out).with_suffix(".pyspy.txt")), "--", *command]
    env = {**VARIANT_ENV[variant], "PYTHONPATH": python_path(project), "COLUMNS": "120"}
    log = Path(args.out).with_name(f"{Path(args.out).stem}-{variant}.log")
    code, wall = run_timed(command, log, env=env, cwd=project, timeout_s=args.timeout)
    found = re.search(r"MLflow run id: (\w+)", log.read_text())
    if command[0] == "py-spy" and not found:  # the profiler could not run here: measure without it
        print(log.read_text()[-2000:], file=sys.stderr)
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir(parents=True)
        command = command[command.index("--") + 1:]
        code, wall = run_timed(command, log, env=env, cwd=project, timeout_s=args.timeout)
        found = re.search(r"MLflow run id: (\w+)", log.read_text())
    row: dict = {"variant": variant, "exit_code": code, "wall_s": round(wall, 1), "project": str(project),
                 "command": " ".join(command)}
    if found:
        client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
        run = client.get_run(found.group(1))
        row["phases"], row["phases_from"] = phases_of_run(client, run)
        row["metrics"] = {k: v for k, v in run.data.metrics.items()
                          if k in ("eval/mmlu_offline/acc", "eval/perplexity", "train/mean_tokens_per_s",
                                   "train/peak_memory_bytes", "train/final_loss")}
        row["chosen"] = {k: v for k, v in run.data.params.items()  # what auto settings chose
                         if k.startswith(("train.applied_", "train.chosen_"))}
        row.update(steady_throughput(client, run.info.run_id, args.skip_steps))
        row["system_metrics"] = {k: v for k, v in run.data.metrics.items() if k.startswith("system/")}
    return row


def steady_throughput(client, run_id: str, skip: int) -> dict:
    """Training throughput once warm: the steps after the first ``skip`` (which pay for
    compilation and the allocator's growth), from the run's per-step ``train/*`` metrics."""
    rates = [m.value for m in sorted(client.get_metric_history(run_id, "train/tokens_per_s"),
                                     key=lambda m: m.step)]
    losses = [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]
    warm = rates[skip:]
    if not warm:
        return {}
    return {"steps": len(rates), "skipped_steps": skip,
            "steady_tokens_per_s_median": round(statistics.median(warm), 1),
            "steady_tokens_per_s_mean": round(statistics.fmean(warm), 1),
            "loss_by_step": [round(x, 4) for x in losses]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="after,omp1")
    parser.add_argument("--before", default=None, help="checkout of the older qsweep (variant before)")
    parser.add_argument("--config", default=str(ROOT / "bench" / "trial-8b.yaml"))
    parser.add_argument("--work", default="/tmp/trial-gpu", help="runs roots, one per variant")
    parser.add_argument("--profile", action="store_true", help="py-spy record the after variant")
    parser.add_argument("--timeout", type=float, default=560)
    parser.add_argument("--skip-steps", type=int, default=5, help="warm-up steps left out of the steady "
                        "tokens/s")
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="trial config overrides, e.g. train.max_steps=10")
    args = parser.parse_args()
    rows = []
    for variant in args.variants.split(","):
        rows.append(run_variant(variant, args))
        print(json.dumps(rows[-1]), flush=True)
        Path(args.out).write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                              "environment": environment(), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
