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
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from qsweep.evaluation.batching import BatchSizer
from qsweep.evaluation.config import MMLU_FAMILY, EvalConfig
from qsweep.evaluation.items import ItemRecords
from qsweep.evaluation.mmlu_categories import SUBJECT_CATEGORIES, subject_key
from qsweep.evaluation.results import subject_task, summarize
from qsweep.evaluation.task_files import TASKS_DIR
from qsweep.trainers.errors import SetupError

log = logging.getLogger("qsweep")

OOM_ATTEMPTS = 3
"""Runs of one evaluation before running out of memory is an error (each with half the batch)."""


@dataclass
class EvalOutcome:
    """What one evaluation produced."""

    metrics: dict[str, float]
    """Flat ``eval/...`` metrics (see ``qsweep.evaluation.results``)."""
    results: dict[str, Any]
    """lm-eval's results, JSON-ready (per-sample records moved to ``samples``)."""
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per-task per-document records, when asked for."""
    items: ItemRecords | None = None
    """Per-question and per-document scores (always kept: item-level statistics need them)."""
    seconds: float = 0.0
    documents: int = 0
    batch_size: Any = None
    """The batch size used for each kind of request (loglikelihood, rolling, generate)."""
    attempts: int = 1
    """Runs it took: an evaluation that ran out of memory is retried with smaller batches."""

    def write(self, directory: Path) -> list[Path]:
        """results.json, items.json.gz (and samples_<task>.jsonl) into ``directory``; returns
        the files."""
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / "results.json"]
        written[0].write_text(json.dumps(self.results, indent=1, default=_jsonable))
        if self.items is not None and len(self.items):
            written.append(self.items.write(directory))
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
    """Raise :class:`SetupError` for task names lm-eval does not know (cheap: no data)."""
    import difflib

    manager = manager or task_manager(cfg.all_tasks)
    known = set(manager.all_tasks)
    for task in cfg.all_tasks:
        if task not in known:
            close = difflib.get_close_matches(task, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = "eval.tasks" if task in cfg.tasks else "eval.baseline_tasks"
            raise SetupError(where, f"lm-eval has no task or group {task!r}{hint}")


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


def _eager() -> contextlib.AbstractContextManager[None]:
    """Run layers compiled for training (``train.compile``) as they are written: their graphs are
    traced for training's shapes and float32 frozen weights, and evaluation's (no gradients,
    weights cast down, other lengths) would compile new ones, which costs more than it saves on
    a single evaluation (bench/README.md, "qsweep trial with the fast layout")."""
    return torch.compiler.set_stance("force_eager")


@functools.cache
def _sized_lm_class() -> type:
    """lm-eval's ``HFLM`` with batch sizes from a :class:`BatchSizer` (made on first use, so
    importing this module does not import lm-eval)."""
    import torch.nn.functional as F  # noqa: N812 - the usual spelling
    from lm_eval.models.huggingface import HFLM

    class SizedHFLM(HFLM):
        """HFLM that never probes at the model's advertised context.

        Before each batch of work the batch size comes from the sizer, measured at the longest
        request of that work; rolling (perplexity) requests also bound ``max_length`` to the
        longest document, which leaves every window as it was (one per document that fits the
        model). Everything else is lm-eval's own scoring.
        """

        def __init__(self, *, sizer: BatchSizer, progress: Progress | None = None, **kwargs: Any):
            super().__init__(batch_size=1, **kwargs)
            self.sizer = sizer
            self._in_rolling = False
            self.progress = progress
            self._kind, self._scored, self._to_score = "", 0, 0
            # lm-eval's own bars (a bar per batch of perplexity windows) unless asked for
            self.quiet = bool(os.environ.get("TQDM_DISABLE"))

        def _expect(self, kind: str, sequences: int) -> None:
            """Work of one request type starts: ``sequences`` forward rows to score."""
            self._kind, self._scored, self._to_score = kind, 0, sequences
            if self.progress is not None:
                self.progress(kind, 0, sequences)

        def _model_call(self, inps: Any, *args: Any, **kwargs: Any) -> Any:
            logits = super()._model_call(inps, *args, **kwargs)
            if self.progress is not None and self._to_score and not getattr(self, "_probing", False):
                self._scored += int(inps.shape[0])
                self.progress(self._kind, min(self._scored, self._to_score), self._to_score)
            return logits

        def _probe(self, batch: int, length: int) -> None:
            # What lm-eval's scoring holds for one batch: the logits and their log-softmax.
            ids = torch.ones((batch, length), dtype=torch.long, device=self.device)
            self._probing = True
            try:
                F.log_softmax(self._model_call(ids), dim=-1, dtype=self.softmax_dtype)
            finally:
                self._probing = False

        def _size(self, kind: str, length: int, count: int) -> None:
            self.batch_size_per_gpu = self.sizer.choose(kind, min(length, self.max_length), count,
                                                        self._probe)

        def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
            return super().loglikelihood(requests, disable_tqdm or self.quiet)

        def _loglikelihood_tokens(self, requests: Any, disable_tqdm: bool = False,
                                  override_bs: int | None = None) -> Any:
            if requests and not self._in_rolling:
                longest = max(len(context) + len(continuation) for _, context, continuation in requests)
                self._size("loglikelihood", longest - 1, len(requests))
                # one forward row per distinct context when lm-eval groups the continuations
                rows = ({tuple(context + continuation[:-1]) for _, context, continuation in requests}
                        if self.backend == "causal" and self.logits_cache else requests)
                self._expect("loglikelihood", len(rows))
            return super()._loglikelihood_tokens(requests, disable_tqdm or self.quiet, override_bs)

        def loglikelihood_rolling(self, requests: Any, disable_tqdm: bool = False) -> Any:
            disable_tqdm = disable_tqdm or self.quiet
            if not requests:
                return []
            longest = max(len(self.tok_encode(request.args[0])) for request in requests)
            configured = self._max_length
            self._max_length = max(1, min(self.max_length, longest))
            self._size("rolling", self._max_length, len(requests))
            self._expect("rolling", len(requests))  # one window per document: max_length covers the longest
            self._in_rolling = True
            try:
                return super().loglikelihood_rolling(requests, disable_tqdm)
            finally:
                self._in_rolling = False
                self._max_length = configured

        def generate_until(self, requests: Any, disable_tqdm: bool = False) -> Any:
            disable_tqdm = disable_tqdm or self.quiet
            if requests:
                context = max(len(self.tok_encode(request.args[0])) for request in requests)
                new_tokens = max(int(request.args[1].get("max_gen_toks", self.max_gen_toks))
                                 for request in requests)
                self._size("generate", context + new_tokens, len(requests))
            return super().generate_until(requests, disable_tqdm)

    return SizedHFLM


Progress = Callable[[str, int, int], None]
"""Called with (request type, sequences scored, sequences to score) as an evaluation's forward
passes run: ``loglikelihood`` (multiple choice), then ``rolling`` (perplexity windows)."""


def evaluate_model(model: Any, tokenizer: Any, cfg: EvalConfig, *, compute_dtype: torch.dtype,
                   weight_dtype: torch.dtype | None = None, exclude_subjects: tuple[str, ...] = (),
                   manager: Any | None = None, sizer: BatchSizer | None = None,
                   progress: Progress | None = None) -> EvalOutcome:
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
        sizer: chooses batch sizes; pass the same one to every evaluation of a model so its
            memory is measured once (default: a new one for ``cfg.batch_size``).
        progress: told how many sequences are scored of how many (:data:`Progress`); lm-eval's
            own progress bars stay off while ``TQDM_DISABLE`` is set (the CLI sets it).
    """
    from lm_eval import evaluator

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
    sizer = sizer or BatchSizer.for_device(cfg.batch_size, device)
    sizer.chosen.clear()  # this evaluation's batches, not an earlier one's
    mixed = compute_dtype if compute_dtype != torch.float32 else None
    lm = _sized_lm_class()(pretrained=model, tokenizer=tokenizer, sizer=sizer, mixed_precision_dtype=mixed,
                           progress=progress)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    attempts = 0
    try:
        with _preserved_rng(), torch.no_grad(), _frozen_weights_in(model, weight_dtype), _eager():
            raw = None
            while raw is None:
                attempts += 1
                random.seed(cfg.seed)
                np.random.seed(cfg.seed)
                torch.manual_seed(cfg.seed)
                try:
                    raw = evaluator.evaluate(lm=lm, task_dict=loaded, samples=samples,
                                             log_samples=True, bootstrap_iters=1000)
                except torch.OutOfMemoryError:
                    if attempts >= OOM_ATTEMPTS or not sizer.shrink():
                        raise
                    log.warning("evaluation ran out of memory; again with half the batch")
                if raw is None and torch.cuda.is_available():
                    torch.cuda.empty_cache()  # after the failed attempt's frames are gone
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - started
    per_sample = raw.pop("samples", {}) or {}
    documents = sum(v.get("effective", 0) for v in raw.get("n-samples", {}).values())
    return EvalOutcome(metrics=summarize(raw), results=raw, samples=per_sample if cfg.save_samples else {},
                       items=ItemRecords.from_samples(per_sample), seconds=seconds,
                       documents=documents, batch_size=dict(sizer.chosen), attempts=attempts)
