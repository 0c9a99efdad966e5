"""lm-eval on the model in memory: the one module of qsweep that imports lm-eval.

The trained model — the 4-bit base with its LoRA adapter, exactly as training left it — is
wrapped in lm-eval's ``HFLM`` without merging or reloading; the untuned base is evaluated by
switching the adapter off. Tasks resolve through lm-eval's ``TaskManager`` with qsweep's own
task directory (``evaluation/tasks``) included, so ``mmlu_offline`` and
``perplexity_offline`` load like any lm-eval task. Example::

    outcome = evaluate_model(qlora.model, qlora.tokenizer, cfg.eval, compute_dtype=torch.float32)
    outcome.metrics["eval/mmlu_offline/acc"]
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.config import MMLU_FAMILY, EvalConfig
from evaluation.mmlu_categories import SUBJECT_CATEGORIES, subject_key
from evaluation.results import subject_task, summarize

log = logging.getLogger("qsweep")

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
CPU_BATCH_SIZE = 4


class EvalSetupError(Exception):
    """The evaluation config names something lm-eval cannot run; ``key`` is the config key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


@dataclass
class EvalOutcome:
    """What one evaluation produced."""

    metrics: dict[str, float]
    """Flat ``eval/...`` metrics (see ``evaluation.results``)."""
    results: dict[str, Any]
    """lm-eval's results, JSON-ready (per-sample records moved to ``samples``)."""
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per-task per-document records, when asked for."""
    seconds: float = 0.0
    documents: int = 0
    batch_size: Any = None
    """The batch size used: the configured one, or lm-eval's detected sizes under ``auto``."""

    def write(self, directory: Path) -> list[Path]:
        """results.json (and samples_<task>.jsonl) into ``directory``; returns the files."""
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / "results.json"]
        written[0].write_text(json.dumps(self.results, indent=1, default=_jsonable))
        for task, records in self.samples.items():
            path = directory / f"samples_{task}.jsonl"
            path.write_text("".join(json.dumps(r, default=_jsonable) + "\n" for r in records))
            written.append(path)
        return written


def _jsonable(value: Any) -> Any:
    from lm_eval.utils import handle_non_serializable

    return handle_non_serializable(value)


@functools.cache
def _manager(include_defaults: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)


def task_manager(tasks: list[str] | None = None) -> Any:
    """lm-eval's TaskManager with qsweep's offline tasks; lm-eval's own ones only when needed.

    Indexing lm-eval's ~15,000 task files takes about 40 s on a 2-core machine, indexing
    qsweep's offline tasks alone 0.2 s: when every name in ``tasks`` is an offline task, the
    index is left out. Managers are cached per process.
    """
    offline = _manager(include_defaults=False)
    if tasks is not None and all(task in offline.all_tasks for task in tasks):
        return offline
    return _manager(include_defaults=True)


def check_tasks(cfg: EvalConfig, manager: Any | None = None) -> None:
    """Raise :class:`EvalSetupError` for task names lm-eval does not know (cheap: no data)."""
    import difflib

    manager = manager or task_manager(cfg.tasks)
    known = set(manager.all_tasks)
    for task in cfg.tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise EvalSetupError("eval.tasks", f"lm-eval has no task or group {task!r}{hint}")


def expand_tasks(tasks: list[str], exclude_subjects: set[str]) -> list[str]:
    """Replace an MMLU group by its subject tasks when some subjects must be left out."""
    if not exclude_subjects:
        return list(tasks)
    expanded = []
    for task in tasks:
        if task in MMLU_FAMILY:
            expanded += [f"{task}_{s}" for s in SUBJECT_CATEGORIES if s not in exclude_subjects]
        else:
            expanded.append(task)
    return expanded


def stratified_samples(sizes: dict[str, int], limit: int | dict[str, int | None],
                       seed: int) -> dict[str, list[int]] | None:
    """At most ``limit`` document indices per task (or per-task limits; None: every document),
    drawn with a seed derived from the task. None when no task is limited."""
    limits = limit if isinstance(limit, dict) else dict.fromkeys(sizes, limit)
    if all(limits.get(task) is None for task in sizes):
        return None
    return {
        task: sorted(random.Random(f"{seed}:{task}").sample(range(size), min(limits[task] or size, size)))
        for task, size in sizes.items()
    }


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    # lm-eval seeds the global generators; training before or after must not notice.
    python, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _frozen_weights_in(model: Any, dtype: torch.dtype | None) -> Iterator[None]:
    """Run with the frozen float32 weights cast down to ``dtype``, and cast them back after.

    Training upcasts the base's unquantized weights (embeddings, norms, output head) to
    float32 (peft's ``prepare_model_for_kbit_training``); evaluated that way, the residual
    stream runs in float32 and a Llama-3-8B-shaped NF4 model scores MMLU 1.5x slower than the
    same model loaded for inference (bench/README.md). Those weights were loaded in ``dtype``
    and are never trained, so the round trip float32 -> dtype -> float32 is exact.
    """
    if dtype is None or dtype == torch.float32:
        yield
        return
    frozen = [p for p in model.parameters() if not p.requires_grad and p.dtype == torch.float32]
    for param in frozen:
        param.data = param.data.to(dtype)
    try:
        yield
    finally:
        for param in frozen:
            param.data = param.data.to(torch.float32)


def _batch_size(cfg: EvalConfig, device: torch.device) -> int | str:
    if cfg.batch_size != "auto":
        return cfg.batch_size
    # lm-eval's detection runs forward passes of up to 64 full-length sequences: fine on a
    # GPU, minutes and many GiB on a CPU.
    return "auto" if device.type == "cuda" else CPU_BATCH_SIZE


def evaluate_model(model: Any, tokenizer: Any, cfg: EvalConfig, *, compute_dtype: torch.dtype,
                   weight_dtype: torch.dtype | None = None, exclude_subjects: tuple[str, ...] = (),
                   manager: Any | None = None) -> EvalOutcome:
    """Run ``cfg.tasks`` on ``model`` in memory and summarize the results.

    Args:
        model: a transformers causal LM, or a peft model around one (its adapter active).
        tokenizer: the model's tokenizer.
        cfg: the ``eval`` section.
        compute_dtype: autocast dtype of the forward passes (the trial's quant.compute_dtype).
        weight_dtype: the dtype the unquantized weights were loaded in (the trial's model.dtype);
            frozen weights that training upcast to float32 are evaluated in it.
        exclude_subjects: MMLU subjects (data spelling) left out, e.g. those trained on.
        manager: a TaskManager to reuse (default: a new one).
    """
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    manager = manager or task_manager(cfg.tasks)
    excluded = {subject_key(s) for s in exclude_subjects}
    names = expand_tasks(cfg.tasks, excluded)
    loaded = manager.load(names)
    leaves = loaded["tasks"]
    for name, task in leaves.items():
        is_mmlu = subject_task(name) is not None or name in MMLU_FAMILY
        fewshot = cfg.fewshot_for("mmlu" if is_mmlu else name)
        if fewshot is not None:
            task.set_config(key="num_fewshot", value=fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=cfg.seed)
    samples = stratified_samples({n: len(t.eval_docs) for n, t in leaves.items()},
                                 {n: cfg.limit_for(n) for n in leaves}, cfg.seed)
    device = next(model.parameters()).device
    mixed = compute_dtype if compute_dtype != torch.float32 else None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=_batch_size(cfg, device),
              mixed_precision_dtype=mixed)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    try:
        with _preserved_rng(), torch.no_grad(), _frozen_weights_in(model, weight_dtype):
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
            raw = evaluator.evaluate(lm=lm, task_dict=loaded, samples=samples,
                                     log_samples=cfg.save_samples, bootstrap_iters=1000)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    per_sample = raw.pop("samples", {}) or {}
    documents = sum(v.get("effective", 0) for v in raw.get("n-samples", {}).values())
    return EvalOutcome(metrics=summarize(raw), results=raw, samples=per_sample, seconds=seconds,
                       documents=documents, batch_size=dict(lm.batch_sizes) or lm.batch_size)
