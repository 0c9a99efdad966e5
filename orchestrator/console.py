"""Terminal output with rich: logging, errors, training progress and summaries."""

from __future__ import annotations

import logging
from types import TracebackType

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from trainers.metrics import StepMetrics, TrainResult

console = Console()
errors = Console(stderr=True)


def configure_logging(verbose: bool = False) -> None:
    handler = RichHandler(console=errors, show_path=False, show_time=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s")
    logging.getLogger("qsweep").setLevel(logging.DEBUG if verbose else logging.INFO)


def print_error(message: str) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class TrainProgress:
    """A progress bar fed by the trainer's ``on_step`` callback."""

    def __init__(self, total_steps: int, description: str = "training"):
        self.total_steps = total_steps
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total_steps, loss="-", speed="-")

    def __enter__(self) -> TrainProgress:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def __call__(self, metrics: StepMetrics) -> None:
        self._progress.update(self._task, completed=metrics.step, loss=f"{metrics.loss:.4f}",
                              speed=f"{metrics.tokens_per_s:,.0f}")
        # Without a terminal (CI, Ray logs, files) a live bar draws nothing until the end:
        # print a plain line every 5% of the run instead.
        every = max(1, self.total_steps // 20)
        if not console.is_terminal and (metrics.step % every == 0 or metrics.step == self.total_steps):
            remaining = self._progress.tasks[0].time_remaining
            eta = f"{remaining:.0f}s" if remaining is not None else "-"
            console.print(f"step {metrics.step}/{self.total_steps} loss {metrics.loss:.4f} "
                          f"lr {metrics.learning_rate:.2e} {metrics.tokens_per_s:,.0f} tok/s eta {eta}",
                          highlight=False)
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
