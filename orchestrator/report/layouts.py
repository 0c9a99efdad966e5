"""What a report table shows (:class:`Layout`), the paper's layouts (:data:`PRESETS`), and the
one way a partial description becomes a layout (:func:`layout_from`: a preset and the fields
that replace its own, from a spec's ``reports`` entry — ``ReportSpec.layout()`` — or the
command line).

Kept apart from ``qsweep.orchestrator.report.reporting`` (statistics, plots) so that the sweep spec can check
its ``reports`` section against the presets without importing scipy or matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qsweep.trainers.errors import ReportError


@dataclass(frozen=True)
class Layout:
    """What a report table shows."""

    rows: str
    """The grid axis whose labels are the rows (e.g. data_type)."""
    metric: str
    """A metric of the trial runs; ``name@0`` for its step-0 value (the untuned base)."""
    columns: list[str] = field(default_factory=list)
    """Grid axes whose label combinations are the columns (the paper's model x dataset)."""
    scale: float = 1.0
    """Display factor (100: accuracies as percentages)."""
    compare: tuple[str, str] | None = None
    """Two row labels compared by a paired t-test over the same (column, seed) pairs."""
    title: str = ""
    name: str = "report"
    """File stem of the outputs."""


PRESETS: dict[str, Layout] = {
    "table2": Layout(rows="data_type", metric="eval/perplexity@0", compare=("NF4+DQ", "FP4"),
                     title="Table 2: perplexity of the quantized base model (before fine-tuning)",
                     name="table2"),
    "table4": Layout(rows="data_type", columns=["model", "dataset"], metric="eval/mmlu/acc", scale=100,
                     compare=("NF4+DQ", "FP4"), title="Table 4: MMLU accuracy after fine-tuning (%)",
                     name="table4"),
}
"""The paper's layouts. Sweeps name their data-type axis ``data_type`` (and, for Table 4,
``model`` and ``dataset``); a spec's ``reports`` entry or the command line can change any field."""


def layout_from(preset: str | None, overrides: dict[str, Any]) -> Layout:
    """A layout from a preset and the fields that replace its own (a spec's ``reports`` entry,
    the command line)."""
    base = PRESETS[preset] if preset else None
    values: dict[str, Any] = {**(base.__dict__ if base else {}), **overrides}
    if "compare" in values and values["compare"] is not None:
        values["compare"] = tuple(values["compare"])
    missing = [key for key in ("rows", "metric") if not values.get(key)]
    if missing:
        raise ReportError(f"the report needs {' and '.join(missing)}: give --preset (table2, table4), "
                          "a reports entry in the spec, or --rows/--metric")
    known = set(Layout.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ReportError(f"report: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return Layout(**values)
