"""Terminal output with rich: logging, errors, training progress and summaries."""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import Any

from qsweep.trainers.metrics import StepMetrics, TrainResult
from qsweep.trainers.phases import LABELS, PHASES, SHORT_LABELS
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def configure_logging(verbose: bool = False) -> None:
    handler = RichHandler(console=errors, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("qsweep").setLevel(logging.DEBUG if verbose else logging.INFO)


def print_error(message: str) -> None:
    """An error for the user; its text (which may quote what they wrote: ``[/bold]`` in a grid
    value, a YAML line with brackets) is never read as markup."""
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class TrainProgress:
    """A trial's live display: one row per phase, added when the phase starts — each evaluation
    (sequences scored of total) and training (steps, loss, tokens/s) — each with an ETA from its
    own measured pace, however slow its steps. Feed ``on_step`` (the trainer's callback: the
    object is callable) and :meth:`evaluation`.

    It draws on the same console as the log (stderr), so log lines print above it and never on
    a bar's line. Without a terminal (CI, Ray logs, files) it prints a plain line to stdout
    every 5% of training instead, and one per quarter of an evaluation.
    """

    def __init__(self, total_steps: int, description: str = "training"):
        self.total_steps = total_steps
        self.description = description
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=12),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("eta {task.fields[eta]}"),
            console=errors,
            transient=False,
        )  # fits 80 columns: "eval base (step 0), perplexity ━━━ 100/100 sequences eta 0:00"
        self._tasks: dict[str, Any] = {}
        self._paces: dict[str, tuple[float, int]] = {}
        """Per row: (when its first unit of work was seen, units done then)."""
        self._printed: dict[str, int] = {}

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def _row(self, description: str, total: int) -> Any:
        if description not in self._tasks:
            self._tasks[description] = self._progress.add_task(description, total=total, detail="", eta="-")
        return self._tasks[description]

    def _eta(self, description: str, done: int, total: int) -> str:
        """Remaining units at the pace measured since the row's first update (its first step's
        set-up left out): an estimate however long each unit takes."""
        now = time.monotonic()
        began, at = self._paces.setdefault(description, (now, done))
        if done <= at or done >= total:
            return "-" if done < total else _duration(0)
        return _duration((now - began) / (done - at) * (total - done))

    def __call__(self, metrics: StepMetrics) -> None:
        row = self._row(self.description, self.total_steps)
        eta = self._eta(self.description, metrics.step, self.total_steps)
        self._progress.update(row, completed=metrics.step, eta=eta,
                              detail=f"loss {metrics.loss:.4f} {metrics.tokens_per_s:,.0f} tok/s")
        every = max(1, self.total_steps // 20)
        if not errors.is_terminal and (metrics.step % every == 0 or metrics.step == self.total_steps):
            console.print(f"step {metrics.step}/{self.total_steps} loss {metrics.loss:.4f} "
                          f"lr {metrics.learning_rate:.2e} {metrics.tokens_per_s:,.0f} tok/s eta {eta}",
                          highlight=False)
            console.file.flush()

    def evaluation(self, description: str, done: int, total: int) -> None:
        """An evaluation's progress: ``done`` of ``total`` sequences scored."""
        done = min(done, total)
        row = self._row(description, total)
        self._progress.update(row, completed=done, total=total, eta=self._eta(description, done, total),
                              detail="sequences")
        quarter = 4 * done // max(1, total)
        if not errors.is_terminal and quarter > self._printed.get(description, 0):
            self._printed[description] = quarter
            console.print(f"{description}: {done}/{total} sequences", highlight=False)
            console.file.flush()


def train_summary(result: TrainResult, title: str = "training summary") -> Table:
    """Steps, final loss, throughput, memory, base footprint and adapter path of a run."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    status = "[green]finished[/]" if result.status == "finished" else f"[red]{result.status}[/]"
    footprint = result.footprint
    memory_label = {"cuda_max_allocated": "CUDA max allocated",
                    "cpu_peak_rss": "peak process RSS"}.get(result.memory_kind, result.memory_kind)
    rows = [
        ("status", f"{status} ({result.reason})"),
        ("steps", f"{result.steps}" + (f" (resumed at {result.resumed_from_step})"
                                       if result.resumed_from_step else "")),
        ("final loss", "-" if result.final_loss is None else f"{result.final_loss:.4f}"),
        ("tokens/s", f"{result.tokens_per_s:,.0f}"),
        ("peak memory", f"{human_bytes(result.peak_memory_bytes)} ({memory_label})"),
        ("base weights", human_bytes(footprint.total_bytes)),
    ]
    if footprint.quantized_params:
        rows.append(("quantized layers", f"{footprint.quantized_params:,} params, "
                     f"{footprint.bits_per_quantized_param:.3f} bits/param "
                     f"({human_bytes(footprint.quantized_bytes)})"))
    rows += [
        ("trainable params", f"{result.trainable_params:,}"),
        ("adapter", str(result.adapter_dir) if result.adapter_dir else "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def phase_line(phases: dict[str, float]) -> str:
    """A trial's time per phase in a line or two: ``time: load 18.0 s, training 226.1 s, ...,
    total 703.5 s (97% training and evaluating)``; phases that took no time left out."""
    total = phases.get("total") or sum(phases.get(name, 0.0) for name in PHASES)
    parts = [f"{LABELS[name].split(' (')[0]} {phases[name]:,.1f} s" for name in PHASES if phases.get(name)]
    share = f" ({phases.get('compute', 0.0) / total:.0%} training and evaluating)" if total else ""
    return f"time: {', '.join(parts)}; total {total:,.1f} s{share}"


def usage_lines(usage: Any) -> str:
    """What ``qsweep run`` prints at its end: GPU use, makespan against its ideal, phase medians."""
    unit = usage.unit
    plural = unit if usage.capacity == 1 else f"{unit}s"
    lines = [
        f"{unit} use: {usage.trials} trial runs on {usage.capacity:g} {plural}, held for "
        f"{usage.held_s:,.0f} {unit}-s: {usage.busy_share:.1%} of it training or evaluating",
        f"makespan {_duration(usage.makespan_s)} against an ideal of {_duration(usage.ideal_s)} "
        f"({usage.makespan_ratio:.2f}x; ideal: all training and evaluation packed onto the "
        f"{usage.capacity:g} {plural})",
    ]
    if usage.phase_medians:
        medians = " · ".join(f"{LABELS[name].split(' (')[0]} {usage.phase_medians[name]:,.1f}"
                             for name in PHASES if name in usage.phase_medians)
        lines.append(f"median seconds per trial: {medians}")
    return "\n".join(lines)


def phases_summary(rows: list[dict[str, Any]], title: str = "trial phases (seconds)") -> Table:
    """One row per trial with the seconds of each phase (``qsweep status --phases``): start,
    load, wait (for the GPU), base (baseline evaluation), train, prune (intermediate
    evaluations), eval, rec (recording), compute (training + evaluating) and total. The trial
    number and status columns show only where they differ between rows."""
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  caption="base: baseline evaluation · prune: evaluations for the pruner · "
                          "rec: recording · compute: training + evaluating", caption_justify="left")
    with_number = any(row["trial"] for row in rows)
    with_status = len({row["status"] for row in rows}) > 1
    names = [name for name in PHASES if any(name in row["phases"] for row in rows)] + ["compute", "total"]
    table.add_column("cell", overflow="fold", min_width=12)
    table.add_column("seed", justify="right")
    if with_number:
        table.add_column("#", justify="right")
    if with_status:
        table.add_column("status", overflow="ellipsis", max_width=9)
    for name in names:
        table.add_column(SHORT_LABELS.get(name, name), justify="right")
    for row in rows:
        phases = row["phases"]
        table.add_row(row["cell"], str(row["seed"]), *([str(row["trial"])] if with_number else []),
                      *([row["status"]] if with_status else []),
                      *(f"{phases[name]:.1f}" if name in phases else "-" for name in names))
    return table


def _headline(name: str) -> bool:
    """Metrics worth a row in the terminal (per-subject ones, subject means and byte-level
    perplexities stay in MLflow), so a trial's output fits a screen."""
    return "/subject/" not in name and not name.endswith(
        ("_stderr", "/n", "_subject_mean", "/bits_per_byte", "/byte_perplexity"))


def eval_table(metrics: dict[str, float], baseline: dict[str, float] | None = None,
               title: str = "evaluation") -> Table:
    """Headline evaluation metrics (value ± standard error), beside the base model's if given."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    if baseline:
        table.add_column("base (step 0)", justify="right")
    table.add_column("trained" if baseline else "value", justify="right")

    def cell(values: dict[str, float], name: str) -> str:
        if name not in values:
            return "-"
        stderr = values.get(name + "_stderr")
        return f"{values[name]:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")

    for name in sorted(set(metrics) | set(baseline or {})):
        if not _headline(name):
            continue
        row = [name.removeprefix("eval/")]
        if baseline:
            row.append(cell(baseline, name))
        row.append(cell(metrics, name))
        table.add_row(*row)
    return table


def plan_table(plan: Any) -> Table:
    """The cells of a sweep plan: labels, cell key, settings."""
    spec = plan.spec
    table = Table(title=f"sweep {spec.name}: {len(plan.cells)} cells", title_justify="left")
    table.add_column("#", justify="right")
    for axis in spec.axes():
        table.add_column(axis.name)
    table.add_column("cell")
    table.add_column("seeds")
    if spec.search:
        table.add_column("search")
    for cell in plan.cells:
        row = [str(cell.index), *cell.labels.values(), cell.key, ",".join(map(str, spec.seeds))]
        if spec.search:
            row.append(f"{spec.search.n_trials} x {', '.join(spec.search.space)}")
        table.add_row(*row)
    return table


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


_STATUS_STYLE = {"finished": "green", "running": "cyan", "pruned": "yellow", "failed": "red", "nan": "red",
                 "crashed": "red", "pending": "dim", "interrupted": "yellow", "scheduled": "cyan"}


RUN_ID_SHOWN = 8
"""Characters of an MLflow run id a table shows (a 32-character id would wrap at 80 columns);
the MLflow UI's search finds a run by this prefix."""


def sweep_summary(rows: list[dict[str, Any]], title: str = "trials",
                  objectives: list[str] | None = None) -> Table:
    """One row per trial: cell, seed, trial number (where a search runs several), status, the
    objectives' values (headed by their metrics), searched params (where a search chose some),
    duration, MLflow run id (its first characters)."""
    # No vertical rules, and the trial number only where a search runs several: 80 columns hold it.
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    with_params = any(row["params"] for row in rows)
    numbered = any(row["trial"] for row in rows)
    widest = max((len(row["cell"]) for row in rows), default=4)
    table.add_column("cell", no_wrap=True, min_width=min(widest, 28))
    table.add_column("seed", justify="right", no_wrap=True)
    if numbered:
        table.add_column("trial", justify="right", no_wrap=True)
    table.add_column("status", min_width=8)
    metrics = ", ".join(m.removeprefix("eval/") for m in objectives) if objectives else "objective"
    table.add_column(metrics, no_wrap=True, min_width=9)
    if with_params:
        table.add_column("params")
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("run", no_wrap=True, min_width=RUN_ID_SHOWN)
    for row in rows:
        style = _STATUS_STYLE.get(row["status"], "")
        status = f"[{style}]{row['status']}[/]" if style else row["status"]
        if row["reason"] and row["status"] not in ("finished", "pending", "running"):
            status += f" ({row['reason'][:60]})"
        values = ", ".join(f"{v:.4g}" for v in row["values"]) if row["values"] else "-"
        params = [", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float)
                            else f"{k.split('.')[-1]}={v}" for k, v in row["params"].items()) or "-"]
        number = [str(row["trial"])] if numbered else []
        table.add_row(row["cell"], str(row["seed"]), *number, status, values,
                      *(params if with_params else []), _duration(row["seconds"]),
                      (row["run_id"] or "-")[:RUN_ID_SHOWN])
    return table


class SweepProgress:
    """Live sweep progress: trials ended / running / failed / pruned, best so far, ETA."""

    def __init__(self, total: int, concurrency: int, objective: str):
        self.total, self.concurrency, self.objective = total, concurrency, objective
        self._progress = Progress(
            TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[best]}"),
            TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
            console=errors, transient=False)  # with the log, which then never lands on its line
        self._task = self._progress.add_task("sweep", total=total, counts="", best="", eta="-")
        self._last_line = -1

    def __enter__(self) -> SweepProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, tally: Any) -> None:
        counts = f"running {tally.running}" + "".join(
            f", {name} {n}" for name, n in sorted(tally.done.items()))
        best = f"best {self.objective} {tally.best:.4g}" if tally.best is not None else ""
        eta_s = tally.eta_s(self.concurrency)
        eta = _duration(eta_s) if eta_s is not None and tally.ended < self.total else "-"
        self._progress.update(self._task, completed=tally.ended, counts=counts, best=best, eta=eta)
        if not errors.is_terminal and tally.ended != self._last_line:
            self._last_line = tally.ended
            console.print(f"sweep {tally.ended}/{self.total} {counts} {best} eta {eta}", highlight=False)
            console.file.flush()


def report_title(table: Any) -> str:
    return f"[bold]{escape(table.title)}[/] — {escape(table.metric)}; {escape(table.method())}"


def report_table(table: Any) -> Table:
    """An ablation table (``qsweep.orchestrator.report.tables.Table``) for the terminal.

    Its title: :func:`report_title`."""
    out = Table()
    row_axis, *columns = table.header()
    out.add_column(row_axis, style="bold")
    for column in columns:
        out.add_column(column, justify="right")
    for row in table.rows:
        out.add_row(row, *(table.value(row, c) for c in table.columns),
                    *([table.mean(row)] if table.has_mean else []))
    return out
