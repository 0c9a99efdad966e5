"""``qsweep status [SWEEP]``: every cell and trial of a sweep with its state, objectives, duration and run.

Reads the sweep's Optuna storage (the driver may be running or gone); starts nothing. Without a
name: the sweeps under ``--root``.
``--phases`` shows instead where each trial's time went: start, load, evaluations, training,
recording (seconds), and the share spent training or evaluating. Examples::

    qsweep status
    qsweep status demo --phases
"""

from __future__ import annotations

import argparse
from typing import Any

from qsweep.orchestrator.cli.commands import DEFAULT_ROOT, add_credentials_option, help_text


def add_parser(commands: Any) -> None:
    from pathlib import Path

    parser = commands.add_parser("status", help="show a sweep's trials, their state and results",
                                 **help_text(__doc__))
    parser.add_argument("sweep", nargs="?", help="sweep name (under --root) or sweep directory; "
                                                 "none: list the sweeps under --root")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"runs root holding sweeps/ (default {DEFAULT_ROOT})")
    add_credentials_option(parser)
    parser.add_argument("--phases", action="store_true",
                        help="show each trial's time per phase (start, load, evaluations, training)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.cli.commands.run import sweep_directory

    if args.sweep is None:
        return _list_sweeps(args.root)
    directory = sweep_directory(args.sweep, args.root)  # an unknown name fails here, before the imports
    from qsweep.orchestrator.adapters.search import StudyStore, check_storage
    from qsweep.orchestrator.cli.console import console, phases_summary, sweep_summary
    from qsweep.orchestrator.sweep.launch import resolve_storage, status_rows

    plan = directory.snapshot_plan()
    state = directory.load()
    optuna_url, _, _ = resolve_storage(plan, directory, directory.path.parents[1])
    check_storage(optuna_url)
    rows = status_rows(plan, StudyStore(optuna_url, plan.spec))
    if args.phases:
        console.print(phases_summary([row for row in rows if row["status"] != "pending"],
                                     title=f"sweep {plan.spec.name}: seconds per phase"))
    else:
        console.print(sweep_summary(rows, title=f"sweep {plan.spec.name} ({directory.path})",
                                    objectives=[o.metric for o in plan.spec.objectives]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    console.print(", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                  + f"; MLflow parent run {state.parent_run_id} in {state.tracking}", highlight=False)
    return 0


def _list_sweeps(root: Any) -> int:
    """The sweeps under ``root``: name, when created, from which spec, their MLflow parent run."""
    from qsweep.orchestrator.cli.console import RUN_ID_SHOWN, console
    from qsweep.orchestrator.sweep.sweep_dir import SweepDir
    from rich.table import Table

    states = [SweepDir(path.parent).load() for path in sorted((root / "sweeps").glob("*/sweep.json"))]
    if not states:
        console.print(f"no sweeps in {root / 'sweeps'}; `qsweep run SPEC` starts one", highlight=False)
        return 0
    table = Table(title=f"sweeps in {root / 'sweeps'}", title_justify="left")
    for column in ("sweep", "created", "spec", "MLflow parent run"):
        table.add_column(column, overflow="fold" if column == "spec" else None)
    for state in states:
        table.add_row(state.name, state.created.replace("T", " ")[:16], state.spec_source,
                      (state.parent_run_id or "-")[:RUN_ID_SHOWN])
    console.print(table)
    console.print("qsweep status NAME shows a sweep's trials", highlight=False)
    return 0
