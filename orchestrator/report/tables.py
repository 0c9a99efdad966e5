"""Ablation tables from trial records: seeds aggregated with confidence intervals.

A table has one row per label of a grid axis (``data_type``: 16-bit, NF4+DQ, FP4) and one
column per combination of the column axes (``model`` x ``data.name``), as the paper's Table 4;
each cell is the mean of a metric over the cell's seeds with its t-interval and n. A cell
whose seeds did not all finish is marked — never silently averaged as if complete — and the
Mean column is computed per seed over the columns, so it has an interval too when every
column has that seed. Grid axes in neither rows nor columns are averaged per seed (the paper's
Table 2 averages over models). Render with :func:`to_markdown`, :func:`to_latex` (booktabs) or
:func:`to_csv`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from qsweep.evaluation.statistics import Estimate, t_interval

INCOMPLETE = "†"


@dataclass(frozen=True)
class ReportedTrial:
    """One finished-or-not trial as a report sees it."""

    labels: dict[str, str]
    """Grid axis to the label of this trial's cell."""
    seed: int
    status: str
    """finished, failed, nan, pruned, running ..."""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TableCell:
    """One cell of a report table: the metric's estimate over the seeds of a (row, column)."""

    estimate: Estimate
    expected: int
    """Trials planned for the cell (its seeds)."""
    failed: int
    """Trials of the cell that ended without the metric (failed, nan, pruned); a cell with any
    is marked, even when averaging over other axes left every seed a value."""

    @property
    def complete(self) -> bool:
        return self.estimate.n == self.expected and not self.failed


@dataclass(frozen=True)
class Table:
    title: str
    metric: str
    row_axis: str
    column_axes: tuple[str, ...]
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], TableCell]
    means: dict[str, Estimate]
    """Per row: the mean over columns, per seed, then over seeds (NaN interval if incomplete)."""
    scale: float = 1.0

    @property
    def has_mean(self) -> bool:
        """A Mean column only says something with several columns."""
        return len(self.columns) > 1

    def value(self, row: str, column: str) -> str:
        cell = self.cells.get((row, column))
        if cell is None or cell.estimate.n == 0:
            return "failed" if cell is not None and cell.failed else "—"
        text = cell.estimate.format(self.scale)
        return text if cell.complete else f"{text}{INCOMPLETE}"

    def mean(self, row: str) -> str:
        estimate = self.means.get(row)
        return estimate.format(self.scale) if estimate is not None else "—"

    def footnotes(self) -> list[str]:
        notes = []
        for (row, column), cell in self.cells.items():
            if not cell.complete:
                why = f", {cell.failed} failed" if cell.failed else ""
                notes.append(f"{INCOMPLETE} {row} / {column}: n={cell.estimate.n} of {cell.expected} "
                             f"seeds{why}")
        return notes


def _column_label(labels: dict[str, str], axes: Sequence[str]) -> str:
    return " / ".join(labels.get(axis, "?") for axis in axes) if axes else "all"


def build_table(records: Sequence[ReportedTrial], *, rows: str, columns: Sequence[str], metric: str,
                seeds: Sequence[int], title: str = "", scale: float = 1.0,
                row_order: Sequence[str] | None = None) -> Table:
    """Aggregate ``metric`` of ``records`` into rows x columns over ``seeds``.

    Args:
        records: the sweep's trials (one per cell and seed; more per cell with a search).
        rows: the grid axis whose labels are the rows.
        columns: grid axes whose label combinations are the columns (empty: one column).
        metric: e.g. ``eval/mmlu/acc`` (its best trial per (cell, seed) is taken as the cell's
            seed value: the last one to finish when the search ran several).
        seeds: the seeds every cell was planned with.
        scale: displayed values are multiplied by it (100 for percentages).
        row_order: rows in this order (labels not listed follow, in order of appearance).
    """
    row_labels: list[str] = list(row_order or [])
    column_labels: list[str] = []
    collected: dict[tuple[str, str], dict[int, list[float]]] = {}
    failed: dict[tuple[str, str], int] = {}
    for record in records:
        row = record.labels.get(rows, "?")
        column = _column_label(record.labels, columns)
        if row not in row_labels:
            row_labels.append(row)
        if column not in column_labels:
            column_labels.append(column)
        key = (row, column)
        value = record.metrics.get(metric)
        if record.status == "finished" and value is not None and math.isfinite(value):
            collected.setdefault(key, {}).setdefault(record.seed, []).append(value)
        elif record.status != "running":
            failed[key] = failed.get(key, 0) + 1
    # Axes in neither rows nor columns are averaged per seed (Table 2: the mean over models).
    values = {key: {seed: sum(v) / len(v) for seed, v in by_seed.items()}
              for key, by_seed in collected.items()}
    cells = {}
    for row in row_labels:
        for column in column_labels:
            by_seed = values.get((row, column), {})
            lost = failed.get((row, column), 0)
            if by_seed or lost:
                estimate = t_interval([by_seed[s] for s in sorted(by_seed)])
                cells[(row, column)] = TableCell(estimate, len(seeds), lost)
    means = {}
    for row in row_labels:
        per_seed = []
        for seed in seeds:
            seed_values = [values.get((row, column), {}).get(seed) for column in column_labels]
            if all(v is not None for v in seed_values):
                per_seed.append(sum(seed_values) / len(seed_values))  # type: ignore[arg-type]
        if len(per_seed) == len(seeds):
            means[row] = t_interval(per_seed)
    return Table(title or metric, metric, rows, tuple(columns), row_labels, column_labels, cells, means,
                 scale)


def _header(table: Table) -> list[str]:
    return [table.row_axis, *table.columns, *(["Mean"] if table.has_mean else [])]


def _body(table: Table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        mean = [table.mean(row)] if table.has_mean else []
        rows.append([row, *(table.value(row, c) for c in table.columns), *mean])
    return rows


def to_markdown(table: Table) -> str:
    lines = [f"**{table.title}** ({table.metric}, mean ± 95% CI over seeds)", "",
             "| " + " | ".join(_header(table)) + " |",
             "|" + "---|" * len(_header(table))]
    lines += ["| " + " | ".join(row) + " |" for row in _body(table)]
    notes = table.footnotes()
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    for char, replacement in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"),
                              ("#", r"\#"), ("±", r"$\pm$"), (INCOMPLETE, r"$^\dagger$"), ("—", "--")):
        text = text.replace(char, replacement)
    return text


def to_latex(table: Table) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``)."""
    header = _header(table)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in _body(table)]
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{_latex_escape(table.title)}: {_latex_escape(table.metric)}, mean $\pm$ 95\% "
              r"confidence interval over seeds.}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One line per cell with its numbers: row, column, mean, CI low/high, n, expected, failed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([table.row_axis, "column", "metric", "mean", "ci_low", "ci_high", "n", "expected",
                     "failed"])
    for row in table.rows:
        for column in table.columns:
            cell = table.cells.get((row, column))
            if cell is None:
                writer.writerow([row, column, table.metric, "", "", "", 0, "", ""])
                continue
            e = cell.estimate
            writer.writerow([row, column, table.metric, _number(e.mean), _number(e.low), _number(e.high), e.n,
                             cell.expected, cell.failed])
    return out.getvalue()


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"
