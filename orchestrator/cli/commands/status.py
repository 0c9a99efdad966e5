"""``qsweep status SWEEP``: every cell and trial of a sweep with its state, objective, duration and run.

Reads the sweep's Optuna storage (the driver may be running or gone); starts nothing.
``--phases`` shows instead where each trial's time went: start, load, evaluations, training,
recording (seconds), and the share spent training or evaluating.
"""

from __future__ import annotations

import argparse
from typing import Any

from qsweep.orchestrator.cli.commands import DEFAULT_ROOT


def add_parser(commands: Any) -> None:
    from pathlib import Path

    parser = commands.add_parser("status", help="show a sweep's trials, their state and results",
                                 description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="sweep name (under --root) or sweep directory")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"runs root holding sweeps/ (default {DEFAULT_ROOT})")
    parser.add_argument("--phases", action="store_true",
                        help="show each trial's time per phase (start, load, evaluations, training)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.adapters.search import StudyStore
    from qsweep.orchestrator.cli.commands.run import sweep_directory
    from qsweep.orchestrator.cli.console import console, phases_summary, sweep_summary
    from qsweep.orchestrator.sweep.launch import resolve_storage, status_rows
    from qsweep.orchestrator.sweep.planning import load_plan

    directory = sweep_directory(args.sweep, args.root)
    plan = load_plan(directory.spec_file)
    state = directory.load()
    optuna_url, _, _ = resolve_storage(plan, directory, directory.path.parents[1])
    rows = status_rows(plan, StudyStore(optuna_url, plan.spec))
    if args.phases:
        console.print(phases_summary([row for row in rows if row["status"] != "pending"],
                                     title=f"sweep {plan.spec.name}: seconds per phase"))
    else:
        console.print(sweep_summary(rows, title=f"sweep {plan.spec.name} ({directory.path})"))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                  + f"; MLflow parent run {state.parent_run_id} in {state.tracking}", highlight=False)
    return 0
