"""``qsweep report``: a sweep's ablation tables and plots, built from its MLflow records.

The records are read from MLflow (the sweep's parent run and its children), not from local
files, so a report can be built anywhere the tracking server is reachable. A layout names the
row axis, the column axes and the metric; ``<metric>@0`` takes the value logged at step 0 —
the untuned base, the setting of the paper's Table 2. Outputs: a rich table on the terminal,
Markdown, LaTeX (booktabs), CSV and PNG plots, all also logged on the parent run under
``report/``.

Where the trials recorded their evaluations' items (questions, documents: ``eval/items.json.gz``
and ``eval/baseline/items.json.gz``), cells get a bootstrap interval over seeds and items and a
comparison of two rows is tested over the same items and seeds (a paired permutation test);
the seed-level paired t-test follows as a second line where at least 3 (column, seed) pairs
exist, and is the only one for runs recorded without items.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qsweep.evaluation.items import ITEMS_FILE, ItemRecords, ItemScores
from qsweep.evaluation.statistics import ACCURACY, Comparison, paired_item_comparison, paired_t_test
from qsweep.orchestrator.report.layouts import Layout
from qsweep.orchestrator.report.tables import (
    ReportedTrial,
    Table,
    aligned_items,
    build_table,
    to_csv,
    to_latex,
    to_markdown,
)
from qsweep.trainers.errors import ReportError


@dataclass
class SweepRecords:
    parent_run_id: str
    experiment_id: str
    seeds: list[int]
    axes: dict[str, list[str]]
    trials: list[ReportedTrial]


def read_sweep(uri: str, experiment: str, sweep: str, metrics: list[str],
               required: Iterable[str] = ()) -> SweepRecords:
    """The sweep's trials from MLflow: labels, seed, status and the asked-for metrics. A metric of
    ``required`` that no finished trial logged is an error naming those they did log."""
    from qsweep.orchestrator.adapters.tracking import _client, find_runs

    parents = find_runs(uri, experiment, {"qsweep.role": "sweep", "qsweep.sweep": sweep})
    if not parents:
        raise ReportError(f"no sweep {sweep!r} in MLflow experiment {experiment!r}")
    parent = parents[-1]
    client = _client(uri)
    children = find_runs(uri, experiment, {"mlflow.parentRunId": parent.info.run_id})
    trials = []
    for run in children:
        tags = run.data.tags
        values = {}
        for metric in metrics:
            name, _, step = metric.partition("@")
            if step:
                history = [m for m in client.get_metric_history(run.info.run_id, name) if m.step == int(step)]
                if history:
                    values[metric] = history[-1].value
            elif name in run.data.metrics:
                values[metric] = run.data.metrics[name]
        labels = {key.removeprefix("qsweep.axis."): value for key, value in tags.items()
                  if key.startswith("qsweep.axis.")}
        status = tags.get("qsweep.status", "unknown")
        items = _items(client, run.info.run_id, metrics) if status == "finished" else {}
        trials.append(ReportedTrial(labels, int(tags.get("qsweep.seed", 0)), status, values, items))
    finished = [run for run in children if run.data.tags.get("qsweep.status") == "finished"]
    logged = set().union(*(run.data.metrics for run in finished)) if finished else set()
    missing = [metric for metric in required if finished and metric.partition("@")[0] not in logged]
    if missing:  # a misspelled metric, not trials that failed
        known = sorted(name for name in logged if name.startswith(("eval/", "eval_base/", "train/")))
        raise ReportError(f"no finished trial of sweep {sweep!r} logged {', '.join(missing)}; metrics "
                          f"they logged: {', '.join(known)}")
    params = parent.data.params
    seeds = json.loads(params.get("sweep.seeds", "[0]"))
    axes = _structured(params.get("sweep.grid", "{}"))
    return SweepRecords(parent.info.run_id, parent.info.experiment_id, seeds, axes, trials)


def _items(client: Any, run_id: str, metrics: list[str]) -> dict[str, ItemScores]:
    """The items behind each metric, from the run's ``eval/items.json.gz`` (final evaluation)
    or ``eval/baseline/items.json.gz`` (``@0``); none for runs recorded without them."""
    found: dict[str, ItemScores] = {}
    records: dict[str, ItemRecords | None] = {}
    for metric in metrics:
        name, _, step = metric.partition("@")
        where = "eval/baseline" if step == "0" else "eval"
        if step not in ("", "0"):
            continue  # intermediate evaluations keep no items
        if where not in records:
            records[where] = _download_items(client, run_id, f"{where}/{ITEMS_FILE}")
        scores = records[where].for_metric(name) if records[where] is not None else None
        if scores is not None:
            found[metric] = scores
    return found


def _download_items(client: Any, run_id: str, path: str) -> ItemRecords | None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file otherwise
    with tempfile.TemporaryDirectory() as directory:
        try:
            local = client.download_artifacts(run_id, path, directory)
        except Exception:  # noqa: BLE001 - an older run without items: the report falls back to seeds
            return None
        return ItemRecords.read(Path(local))


def _structured(text: str) -> Any:
    """A structured param: JSON, or Python's repr as runs recorded before 2026-11-26 hold it."""
    import ast

    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return {}


def make_table(records: SweepRecords, layout: Layout) -> Table:
    """The layout's table over the sweep's records (checks its axes exist)."""
    missing = [axis for axis in [layout.rows, *layout.columns] if axis not in records.axes]
    if missing:
        raise ReportError(f"the sweep has no grid axis {', '.join(map(repr, missing))}; its axes: "
                          f"{', '.join(records.axes) or '(none)'}")
    return build_table(records.trials, rows=layout.rows, columns=layout.columns, metric=layout.metric,
                       seeds=records.seeds, title=layout.title or layout.metric, scale=layout.scale,
                       row_order=records.axes[layout.rows])


def discordance_of(records: SweepRecords, metric: str) -> float | None:
    """Mean share of shared items that two trials of the same seed answered differently, over
    every such pair of trials (the pilot figure of ``qsweep plan --pilot``)."""
    from itertools import combinations

    from qsweep.evaluation.power import discordance

    by_seed: dict[int, list[ItemScores]] = {}
    for trial in records.trials:
        if metric in trial.items:
            by_seed.setdefault(trial.seed, []).append(trial.items[metric])
    shares = []
    for scores in by_seed.values():
        for first, second in combinations(scores, 2):
            aligned = aligned_items([first, second])
            if aligned is not None:
                shares.append(discordance([aligned[0][0]], [aligned[0][1]]))
    return sum(shares) / len(shares) if shares else None


def compare_rows(records: SweepRecords, layout: Layout) -> list[Comparison]:
    """``layout.compare``'s rows over the (column, seed) pairs both finished: at item level where
    every pair has items in common, and by a paired t-test over the pairs where there are at
    least 3 of them (or no items); empty when nothing can be compared."""
    if layout.compare is None:
        return []
    first, second = layout.compare
    keyed: dict[str, dict[tuple[str, int], ReportedTrial]] = {first: {}, second: {}}
    for trial in records.trials:
        row = trial.labels.get(layout.rows)
        value = trial.metrics.get(layout.metric)
        if row in keyed and trial.status == "finished" and value is not None and math.isfinite(value):
            column = tuple(trial.labels.get(axis, "?") for axis in layout.columns)
            keyed[row][(str(column), trial.seed)] = trial
    shared = sorted(set(keyed[first]) & set(keyed[second]))
    comparisons = []
    item_level = _item_comparison([keyed[first][k] for k in shared], [keyed[second][k] for k in shared],
                                  layout.metric)
    if item_level is not None:
        comparisons.append(item_level)
    if len(shared) >= (3 if item_level is not None else 2):
        comparisons.append(paired_t_test([keyed[first][k].metrics[layout.metric] for k in shared],
                                         [keyed[second][k].metrics[layout.metric] for k in shared]))
    return comparisons


def _item_comparison(first: list[ReportedTrial], second: list[ReportedTrial],
                     metric: str) -> Comparison | None:
    if not first or any(metric not in t.items for t in [*first, *second]):
        return None
    aligned = aligned_items([t.items[metric] for t in [*first, *second]])
    if aligned is None:
        return None
    rows, weights, kind = aligned
    a, b = rows[:len(first)], rows[len(first):]
    comparison = paired_item_comparison(a, b, weights, kind)
    if kind != ACCURACY:
        return comparison
    from dataclasses import replace

    from qsweep.evaluation.power import discordance, minimum_detectable_difference

    share = discordance(a, b)
    if share == 0:
        return replace(comparison, note="the two rows answered every question alike")
    resolution = minimum_detectable_difference(len(a[0]), len(a), share, source="measured here")
    return replace(comparison, note="resolution: " + resolution.describe("a difference"))


def describe_comparison(layout: Layout, comparisons: list[Comparison]) -> str:
    if layout.compare is None:
        return ""
    first, second = layout.compare
    if not comparisons:
        return f"{first} vs {second}: fewer than two paired (column, seed) results, no test."
    lines = []
    for comparison in comparisons:
        d = comparison.difference
        p_value = f", p = {comparison.p_value:.3g}" if math.isfinite(comparison.p_value) else ""
        if comparison.ratio:
            lines.append(f"{first} / {second}: {d.mean:.4f} [95% interval {d.low:.4f}, {d.high:.4f}]; "
                         f"{comparison.test}{p_value}")
        elif comparison.item_level:
            lines.append(f"{first} - {second}: {d.mean * layout.scale:.3f} [95% interval "
                         f"{d.low * layout.scale:.3f}, {d.high * layout.scale:.3f}]; "
                         f"{comparison.test}{p_value}")
        else:
            lines.append(f"{first} - {second}: {d.format(layout.scale, 3)} over {d.n} paired (column, seed) "
                         f"results; {comparison.test}{p_value}")
        if comparison.note:
            lines.append(comparison.note)
    return "\n".join(lines)


def plot(table: Table, path: Path) -> Path:
    """The metric per row as dots with their 95% intervals (whiskers), one series per column;
    the axes hold every interval (accuracies stay within 0-100%)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(4.0, 1.2 * len(table.rows) + 2), 3.6))
    width = 0.6 / max(1, len(table.columns))
    ends: list[float] = []
    for j, column in enumerate(table.columns):
        xs, ys, below, above = [], [], [], []
        for i, row in enumerate(table.rows):
            cell = table.cells.get((row, column))
            if cell is None or cell.estimate.n == 0:
                continue
            e = cell.estimate
            mean = e.mean * table.scale
            low, high = (mean, mean) if math.isnan(e.low) else (e.low * table.scale, e.high * table.scale)
            xs.append(i + (j - (len(table.columns) - 1) / 2) * width)
            ys.append(mean)
            below.append(mean - low)
            above.append(high - mean)
            ends += [low, high]
        axis.errorbar(xs, ys, yerr=[below, above], fmt="o", capsize=4, label=table.column_header(column))
    axis.set_xticks(range(len(table.rows)), table.rows)
    axis.set_xlabel(table.row_axis)
    axis.set_ylabel(table.metric)
    axis.set_title(f"{table.title}\n(dots: means; whiskers: 95% intervals)", fontsize=9)
    if ends:
        margin = (max(ends) - min(ends)) * 0.08 or abs(max(ends)) * 0.05 or 1.0
        bottom, top = min(ends) - margin, max(ends) + margin
        if table.scale == 100 and table.metric.endswith("acc"):  # a percentage: never past 0 or 100
            bottom, top = max(bottom, 0.0), min(top, 100.0)
        axis.set_ylim(bottom, top)
    if len(table.columns) > 1:
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_against_memory(records: SweepRecords, layout: Layout, path: Path) -> Path | None:
    """The metric against peak training memory, one point per (row, column) with CI bars."""
    memory = "train/peak_memory_bytes"
    if not any(memory in t.metrics for t in records.trials):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from qsweep.evaluation.statistics import t_interval

    groups: dict[str, tuple[list[float], list[float]]] = {}
    for trial in records.trials:
        value, peak = trial.metrics.get(layout.metric), trial.metrics.get(memory)
        if trial.status == "finished" and value is not None and peak is not None:
            label = trial.labels.get(layout.rows, "?")
            xs, ys = groups.setdefault(label, ([], []))
            xs.append(peak / 2**30)
            ys.append(value * layout.scale)
    figure, axis = plt.subplots(figsize=(5, 3.6))
    for label, (xs, ys) in groups.items():
        x, y = t_interval(xs), t_interval(ys)
        y_error = 0 if math.isnan(y.half_width) else y.half_width
        x_error = 0 if math.isnan(x.half_width) else x.half_width
        axis.errorbar([x.mean], [y.mean], yerr=[[y_error]], xerr=[[x_error]], fmt="o", capsize=3, label=label)
    axis.set_xlabel("peak training memory, GiB (GPU: CUDA's peak allocation; CPU: process RSS)")
    axis.set_ylabel(layout.metric)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(records: SweepRecords, layout: Layout, directory: Path) -> tuple[Table, str, list[Path]]:
    """Build the table, its comparison line and every output file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    table = make_table(records, layout)
    comparison = describe_comparison(layout, compare_rows(records, layout))
    markdown = to_markdown(table) + (f"\n{comparison}\n" if comparison else "")
    files = []
    for suffix, text in ((".md", markdown), (".tex", to_latex(table)), (".csv", to_csv(table))):
        path = directory / f"{layout.name}{suffix}"
        path.write_text(text)
        files.append(path)
    files.append(plot(table, directory / f"{layout.name}.png"))
    against_memory = plot_against_memory(records, layout, directory / f"{layout.name}-memory.png")
    if against_memory is not None:
        files.append(against_memory)
    return table, comparison, files
