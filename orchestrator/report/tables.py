"""Ablation tables from trial records: seeds aggregated with confidence intervals.

A table has one row per label of a grid axis (``data_type``: 16-bit, NF4+DQ, FP4) and one
column per combination of the column axes (``model`` x ``data.name``), as the paper's Table 4;
each cell is the mean of a metric over the cell's seeds with its 95% interval and n. Where the
trials recorded their evaluations' items (``qsweep.evaluation.items``: questions, documents),
the interval is a bootstrap over seeds and items (the same items for every seed), always
inside [0, 1] for accuracies and valid with one seed; otherwise a t-interval over seeds. A cell
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from qsweep.evaluation.items import ItemScores
from qsweep.evaluation.statistics import ITEM_METHOD, Estimate, item_interval, t_interval

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
    items: dict[str, ItemScores] = field(default_factory=dict)
    """Per metric (as the report names it, ``@0`` included): the items behind its value."""


SEED_METHOD = "t-interval over seeds"


def aligned_items(scores: Sequence[ItemScores]) -> tuple[list[list[float]], list[float] | None, str] | None:
    """Several trials' items of one metric as a seeds x items matrix over the items all of them
    have (in the first one's order), with the perplexity weights and the kind; None if they
    have none in common or differ in kind."""
    if not scores or len({s.kind for s in scores}) != 1:
        return None
    common = set(scores[0].ids).intersection(*(s.ids for s in scores[1:]))
    order = [i for i in scores[0].ids if i in common]
    if not order:
        return None
    rows = []
    for s in scores:
        position = {item: k for k, item in enumerate(s.ids)}
        rows.append([s.values[position[item]] for item in order])
    first = {item: k for k, item in enumerate(scores[0].ids)}
    weights = [scores[0].weights[first[item]] for item in order] if scores[0].weights else None
    return rows, weights, scores[0].kind


@dataclass(frozen=True)
class TableCell:
    """One cell of a report table: the metric's estimate over the seeds of a (row, column)."""

    estimate: Estimate
    expected: int
    """Trials planned for the cell (its seeds)."""
    failed: int
    """Trials of the cell that ended without the metric (failed, nan, pruned); a cell with any
    is marked, even when averaging over other axes left every seed a value."""
    seeds: int = 0
    """Seeds with a value."""
    items: int = 0
    """Items (questions, documents) per seed behind the interval; 0: a t-interval over seeds."""

    @property
    def complete(self) -> bool:
        return self.seeds == self.expected and not self.failed

    @property
    def method(self) -> str:
        return ITEM_METHOD if self.items else SEED_METHOD


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

    def header(self) -> list[str]:
        """The row axis, the columns (a table without column axes: its metric), Mean. A
        ``dataset`` axis is the training set, and says so: the table's metric names the
        evaluation (``7B / trained on alpaca`` under ``eval/mmlu/acc``)."""
        columns = ([self.column_header(column) for column in self.columns] if self.column_axes
                   else [self.metric])
        return [self.row_axis, *columns, *(["Mean"] if self.has_mean else [])]

    def column_header(self, column: str) -> str:
        parts = column.split(" / ")
        if "dataset" not in self.column_axes or len(parts) != len(self.column_axes):
            return column
        return " / ".join(f"trained on {part}" if axis == "dataset" else part
                          for axis, part in zip(self.column_axes, parts, strict=True))

    def value(self, row: str, column: str) -> str:
        cell = self.cells.get((row, column))
        if cell is None or cell.estimate.n == 0:
            return "failed" if cell is not None and cell.failed else "—"
        e = cell.estimate
        text = (f"{e.mean * self.scale:.2f} [{e.low * self.scale:.2f}, {e.high * self.scale:.2f}]"
                if cell.items else e.format(self.scale))
        return text if cell.complete else f"{text}{INCOMPLETE}"

    def mean(self, row: str) -> str:
        estimate = self.means.get(row)
        return estimate.format(self.scale) if estimate is not None else "—"

    def footnotes(self) -> list[str]:
        notes = []
        for (row, column), cell in self.cells.items():
            if not cell.complete:
                why = f", {cell.failed} failed" if cell.failed else ""
                notes.append(f"{INCOMPLETE} {row} / {column}: n={cell.seeds} of {cell.expected} "
                             f"seeds{why}")
        return notes

    def method(self) -> str:
        """What the cells' intervals cover, with n: for the caption."""
        by_items = [c for c in self.cells.values() if c.seeds and c.items]
        by_seeds = [c for c in self.cells.values() if c.seeds and not c.items]
        methods = []
        if by_items:
            methods.append(f"mean [95% interval: {ITEM_METHOD}, n = {_span(c.items for c in by_items)} "
                           f"items x {_span(c.seeds for c in by_items)} seeds]")
        if by_seeds:
            methods.append(f"mean ± half the 95% {SEED_METHOD}, n = {_span(c.seeds for c in by_seeds)} seeds")
        if self.has_mean and self.means:
            methods.append("Mean: over columns per seed, then a t-interval over seeds")
        return "; ".join(methods) or "no values"


def _span(values: Iterable[int]) -> str:
    numbers = sorted(set(values))
    return str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"


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
    item_scores: dict[tuple[str, str], dict[int, list[ItemScores]]] = {}
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
            if metric in record.items:
                item_scores.setdefault(key, {}).setdefault(record.seed, []).append(record.items[metric])
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
                cells[(row, column)] = _cell(by_seed, item_scores.get((row, column), {}), len(seeds), lost)
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


def _cell(by_seed: dict[int, float], items: dict[int, list[ItemScores]], expected: int,
          lost: int) -> TableCell:
    """A cell's estimate: over seeds and items where every seed has one trial with items, else
    over seeds."""
    ordered = sorted(by_seed)
    if ordered and sorted(items) == ordered and all(len(items[s]) == 1 for s in ordered):
        aligned = aligned_items([items[s][0] for s in ordered])
        if aligned is not None:
            rows, weights, kind = aligned
            estimate = item_interval(rows, weights, kind)
            return TableCell(estimate, expected, lost, seeds=len(ordered), items=len(rows[0]))
    return TableCell(t_interval([by_seed[s] for s in ordered]), expected, lost, seeds=len(ordered))


def _body(table: Table) -> list[list[str]]:
    rows = []
    for row in table.rows:
        mean = [table.mean(row)] if table.has_mean else []
        rows.append([row, *(table.value(row, c) for c in table.columns), *mean])
    return rows


def to_markdown(table: Table) -> str:
    lines = [f"**{table.title}** ({table.metric}; {table.method()})", "",
             "| " + " | ".join(table.header()) + " |",
             "|" + "---|" * len(table.header())]
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
    header = table.header()
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in _body(table)]
    lines += [r"\bottomrule", r"\end{tabular}",
              rf"\caption{{{_latex_escape(table.title)}: {_latex_escape(table.metric)}; "
              rf"{_latex_escape(table.method())}.}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """One line per cell with its numbers: row, column, mean, CI low/high, n, expected, failed."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([table.row_axis, "column", "metric", "mean", "ci_low", "ci_high", "n", "expected",
                     "failed", "items", "method"])
    for row in table.rows:
        for column in table.columns:
            cell = table.cells.get((row, column))
            if cell is None:
                writer.writerow([row, column, table.metric, "", "", "", 0, "", ""])
                continue
            e = cell.estimate
            writer.writerow([row, column, table.metric, _number(e.mean), _number(e.low), _number(e.high),
                             cell.seeds, cell.expected, cell.failed, cell.items, cell.method])
    return out.getvalue()


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.6g}"
