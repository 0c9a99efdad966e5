"""``qsweep report SWEEP``: ablation tables and plots of a sweep, from its MLflow records.

Without --preset, --rows or --metric it builds the tables that the spec's ``reports`` section
lists. Each cell is the mean over seeds with a 95% interval from a bootstrap over seeds and the
evaluated questions or documents; incomplete cells are marked. Writes each table to the
terminal, to ``<root>/reports/<sweep>/<table>.md``, ``.tex``, ``.csv``, ``.png`` (the metric
per row) and ``-memory.png`` (against peak training memory), and to the sweep's parent run in
MLflow (artifacts under ``report/``). Examples::

    qsweep report demo --preset table2
    qsweep report demo --preset table4 --metric eval/mmlu_offline/acc --columns model
    qsweep report my-sweep --tracking-uri http://mlflow:5000 --rows data_type --metric eval/mmlu/acc
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from qsweep.orchestrator.cli.commands import DEFAULT_ROOT, add_credentials_option, help_text


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("report", help="tables and plots of a sweep from MLflow",
                                 **help_text(__doc__))
    parser.add_argument("sweep", help="sweep name (a local sweep directory supplies its MLflow store)")
    parser.add_argument("--preset", choices=["table2", "table4"], help="the paper's layouts")
    parser.add_argument("--rows", help="grid axis of the rows")
    parser.add_argument("--columns", help="grid axes of the columns, comma-separated")
    parser.add_argument("--metric", help="metric of the trial runs; NAME@0 for its step-0 value")
    parser.add_argument("--scale", type=float, help="display factor (100 for percentages)")
    parser.add_argument("--compare", nargs=2, metavar=("ROW_A", "ROW_B"), help="paired test of two rows")
    parser.add_argument("--name", help="file stem of the outputs")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"runs root (default {DEFAULT_ROOT})")
    add_credentials_option(parser)
    parser.add_argument("--tracking-uri", help="MLflow store of a sweep run elsewhere "
                                               "(default: the local sweep's, else $MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment",
                        help="its MLflow experiment (default: the local sweep's, else qsweep)")
    parser.add_argument("--out", type=Path, help="output directory (default <root>/reports/<sweep>)")
    parser.add_argument("--no-log", action="store_true", help="do not log the outputs on the parent run")
    parser.set_defaults(handler=run)


def sweep_store(args: argparse.Namespace) -> tuple[str, str, list[Any]]:
    """(tracking URI, experiment, the spec's report layouts) of the sweep."""
    from qsweep.orchestrator.sweep.sweep_dir import SweepDir

    directory = SweepDir.of(args.root, args.sweep)
    if directory.exists() and not args.tracking_uri:
        from qsweep.orchestrator.sweep.launch import resolve_storage

        plan = directory.snapshot_plan()
        _, uri, experiment = resolve_storage(plan, directory, args.root.resolve())
        return uri, args.experiment or experiment, list(plan.spec.reports)
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        from qsweep.trainers.errors import ReportError

        raise ReportError(f"no local sweep {args.sweep!r} in {args.root}: pass --tracking-uri (or set "
                          "MLFLOW_TRACKING_URI) and --experiment")
    return uri, args.experiment or "qsweep", []


def publish(uri: str, experiment: str, sweep: str, layouts: list[Any], out: Path, log: bool = True) -> None:
    """Build each layout's table from the sweep's MLflow records, print it, write its files to
    ``out`` and (``log``) log them on the sweep's parent run under ``report/``."""
    from qsweep.orchestrator.adapters.tracking import MlflowTracker
    from qsweep.orchestrator.cli.console import console, report_table, report_title
    from qsweep.orchestrator.report.reporting import read_sweep, write_report

    metrics = sorted({layout.metric for layout in layouts} | {"train/peak_memory_bytes"})
    records = read_sweep(uri, experiment, sweep, metrics, required=[layout.metric for layout in layouts])
    parent = MlflowTracker.attach(uri, records.parent_run_id) if log else None
    summary: list[str] = []
    for layout in layouts:
        table, comparison, files = write_report(records, layout, out)
        summary.append(files[0].read_text())  # the table in Markdown, with its comparison
        console.print(report_title(table), highlight=False)
        console.print(report_table(table))
        for note in table.footnotes():
            console.print(note, highlight=False)
        if comparison:
            console.print(comparison, highlight=False)
        if parent is not None:
            for path in files:
                parent.log_artifact(path, "report")
            parent.log_metrics(cell_means(layout.name, table), step=0)
        logged = f"; logged on parent run {records.parent_run_id}" if parent is not None else ""
        console.print(f"wrote {', '.join(p.name for p in files)} to {out}{logged}", highlight=False)
    if parent is not None and summary:
        # the parent run's description (MLflow's note), Markdown as the UI renders it
        parent.set_tags({"mlflow.note.content": f"# {sweep}\n\n" + "\n".join(summary)})


def cell_means(name: str, table: Any) -> dict[str, float]:
    """Each cell's mean (as the table shows it, scaled) as a metric of the parent run:
    ``report/<table>/<row>`` or ``report/<table>/<row>/<column>``, characters MLflow refuses in
    names (``+``) as ``_``."""
    import math
    import re

    metrics = {}
    for (row, column), cell in table.cells.items():
        if cell.estimate.n == 0 or math.isnan(cell.estimate.mean):
            continue
        name_parts = [name, row, *([column] if table.column_axes else [])]
        metric = re.sub(r"[^\w./\- :]", "_", "report/" + "/".join(name_parts))
        metrics[metric] = cell.estimate.mean * table.scale
    return metrics


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.adapters.tracking import check_reachable
    from qsweep.orchestrator.report.layouts import layout_from
    from qsweep.trainers.errors import ReportError

    uri, experiment, spec_reports = sweep_store(args)
    overrides = {key: value for key, value in {
        "rows": args.rows, "metric": args.metric, "scale": args.scale, "name": args.name,
        "columns": args.columns.split(",") if args.columns else None,
        "compare": tuple(args.compare) if args.compare else None}.items() if value is not None}
    if args.preset or overrides:
        layouts = [layout_from(args.preset, overrides)]
    elif spec_reports:
        layouts = [report.layout() for report in spec_reports]
    else:
        raise ReportError("the sweep's spec has no reports section: give --preset (table2, table4) or "
                          "--rows and --metric")
    check_reachable(uri, "storage.tracking")
    publish(uri, experiment, args.sweep, layouts, args.out or args.root / "reports" / args.sweep,
            log=not args.no_log)
    return 0
