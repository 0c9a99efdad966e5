"""A GPU sweep end to end through ``qsweep run``: makespan against its ideal, GPU busy share.

Runs ``qsweep run bench/sweep-8b.yaml`` (4 data types x 2 seeds of the Llama-3-8B-shaped
trial in ``bench/trial-8b.yaml``; two trials take turns on each GPU) on a local Ray cluster of
every GPU of the machine, while ``nvidia-smi`` samples each GPU every second; then reads every trial's phases
from its MLflow run and reports:

* **makespan** — from the first trial's run opening to the last one's end (MLflow), and the
  command's whole wall time (Ray's start and the checks included);
* **ideal** — the trials' training and evaluation time (their compute phases) spread over the
  GPUs: the makespan with no start-up, loading, recording or idle GPU at all;
* **busy share** — compute GPU-seconds over GPUs x makespan, and ``nvidia-smi``'s mean
  utilisation over the same window;
* **per-phase medians** over the trials, and how many trials loaded their model ahead of
  their turn (``resources.load_ahead``; from their ``trial.log``).

``--before DIR`` runs the sweep with another checkout (a ``git worktree`` of an older commit);
phases of a qsweep that did not record them come from its metrics' timestamps. On a GPU
machine prepared by ``bench/gpu_setup.sh``::

    python3 bench/sweep_gpu.py --out after.json
    python3 bench/sweep_gpu.py --before .bench-before --seeds 0 --out before.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import GpuSampler, phases_of_run, python, python_path, run_timed, utilisation  # noqa: E402
from workers import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(args: argparse.Namespace) -> dict:
    from mlflow.tracking import MlflowClient

    project = Path(args.before).resolve() if args.before else ROOT
    label = "before" if args.before else "after"
    runs = Path(args.work) / label
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    out = Path(args.out)
    command = [python(), "-m", "qsweep.orchestrator.cli", "run", str(Path(args.spec).resolve()),
               f"seeds=[{args.seeds}]", *args.overrides, "--root", str(runs)]
    with GpuSampler(out.with_name(f"{out.stem}-nvidia-smi.csv")) as sampler:
        code, wall = run_timed(command, out.with_name(f"{out.stem}.log"), cwd=project, timeout_s=args.timeout,
                               env={"PYTHONPATH": python_path(project), "COLUMNS": "160"})
    samples = sampler.samples()
    gpus = len({s["gpu"] for s in samples}) or 1

    spec = yaml.safe_load(Path(args.spec).read_text())
    client = MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(spec.get("storage", {}).get("experiment", "qsweep"))
    trials = [] if experiment is None else client.search_runs(
        [experiment.experiment_id], "tags.`qsweep.role` = 'trial'")
    rows, sources = [], set()
    for run in trials:
        phases, source = phases_of_run(client, run)
        sources.add(source)
        tags = run.data.tags
        losses = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
        stamps = [m.timestamp / 1000 for m in losses]
        rows.append({"cell": tags.get("qsweep.axis.data_type"), "seed": tags.get("qsweep.seed"),
                     "status": tags.get("qsweep.status"), "phases": phases,
                     # when each step's loss was logged: step times, and where the train phase
                     # spent time outside its steps (first step, final checkpoint)
                     "step_s": [round(b - a, 3) for a, b in zip(stamps, stamps[1:], strict=False)],
                     "first_step_logged": stamps[0] if stamps else None,
                     "last_step_logged": stamps[-1] if stamps else None,
                     "opened": run.info.start_time / 1000,
                     "ended": (run.info.end_time / 1000) if run.info.end_time else None})
    ended = [r for r in rows if r["ended"] is not None and r["status"] == "finished"]
    logs = [path.read_text(errors="replace") for path in runs.rglob("trial.log")]
    result: dict = {"label": label, "overrides": args.overrides, "project": str(project), "exit_code": code,
                    "command_wall_s": round(wall, 1), "gpus": gpus,
                    "trials_planned": len(args.seeds.split(",")) * 4, "trials_finished": len(ended),
                    "phases_from": sorted(sources), "trials": rows,
                    "loaded_ahead": sum("qsweep: loading the model ahead" in text for text in logs),
                    "not_loaded_ahead": sum("qsweep: not loading the model ahead" in text for text in logs)}
    if ended:
        first, last = min(r["opened"] for r in rows), max(r["ended"] for r in ended)
        makespan = last - first
        compute = sum(r["phases"].get("compute", 0.0) for r in ended)
        window = [s for s in samples if first <= s["time"] <= last]
        names = sorted({name for r in ended for name in r["phases"]})
        result.update({
            "makespan_s": round(makespan, 1),
            "ideal_makespan_s": round(compute / gpus, 1),
            "makespan_over_ideal": round(makespan / (compute / gpus), 3) if compute else None,
            "busy_share": round(compute / (gpus * makespan), 3) if makespan else None,
            "nvidia_smi": utilisation(window),
            "phase_medians_s": {name: round(statistics.median(r["phases"][name] for r in ended
                                                              if name in r["phases"]), 2) for name in names},
        })
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "bench" / "sweep-8b.yaml"))
    parser.add_argument("--seeds", default="0,1", help="seeds of the sweep (4 trials per seed)")
    parser.add_argument("--before", default=None, help="checkout of an older qsweep to measure instead")
    parser.add_argument("--work", default="/tmp/sweep-gpu", help="runs roots")
    parser.add_argument("--timeout", type=float, default=570)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*", help="spec overrides, e.g. trial.train.max_steps=80")
    args = parser.parse_args()
    result = measure(args)
    result["environment"] = environment()
    Path(args.out).write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k not in ("trials", "environment")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
