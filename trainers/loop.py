"""One trial's training: ``train(config, workdir, on_step) -> TrainResult``.

A plain function, as the orchestrator needs it: no Ray, Optuna or MLflow in here. Metrics
leave through ``on_step``; checkpoints go to ``workdir/checkpoints`` and the final adapter to
``workdir/adapter``. With ``resume=True`` (the default) a run continues from the newest
checkpoint in ``workdir`` and produces the same losses as an uninterrupted run.

A non-finite loss or gradient ends the run with ``status="nan"``, not with an exception; any
other failure (out of memory, a bad file) is raised to the caller.

Layers: :func:`prepare` loads data and model (the expensive, fallible setup), :func:`fit`
runs the loop on them, :func:`train` does both. Evaluation reuses ``prepare``'s model in
memory. Example::

    qsweep train configs/trial/smollm2-offline.yaml train.max_steps=20
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from qsweep.trainers import checkpoint as ckpt
from qsweep.trainers.config import TrainConfig, TrainingConfig
from qsweep.trainers.cost_model import GIB, largest_fitting, shape_of, training_cost
from qsweep.trainers.data_recipes import load_records
from qsweep.trainers.errors import ResumeMismatch
from qsweep.trainers.examples import (
    IGNORE_INDEX,
    BatchOrder,
    Example,
    collate,
    group_by_length,
    to_device,
    tokenize,
)
from qsweep.trainers.faults import StepHook
from qsweep.trainers.layout import (
    BatchLayout,
    StepOrder,
    default_budget_bytes,
    probe_peak_bytes,
)
from qsweep.trainers.metrics import MemoryMeter, StepMetrics, TrainResult
from qsweep.trainers.model import (
    DTYPES,
    QLoRAModel,
    check_targets,
    load_qlora_model,
    load_tokenizer,
    model_source,
    resolve_device,
)
from qsweep.trainers.optim import build_optimizer, build_scheduler
from qsweep.trainers.packing import choose_packing, pack, packed_attention, real_tokens
from qsweep.trainers.phases import PhaseClock
from qsweep.trainers.status import TrialStatus

log = logging.getLogger("qsweep")

StepCallback = Callable[[StepMetrics], None]


@dataclass
class TrainingData:
    """What :func:`prepare_data` gets ready without touching the accelerator."""

    source: str
    """Path or hub id the model loads from."""
    targets: list[str]
    """Qualified names of the LoRA target layers."""
    tokenizer: Any
    examples: list[Example]
    data_sha256: str
    """Content hash of the training records (after ``data.limit``)."""


@dataclass
class TrainingSetup:
    """What :func:`prepare` loads: the trainable model and the tokenized examples."""

    qlora: QLoRAModel
    examples: list[Example]
    data_sha256: str
    """Content hash of the training records (after ``data.limit``)."""


def prepare_data(cfg: TrainingConfig, phases: PhaseClock | None = None) -> TrainingData:
    """Everything before the weights, on the CPU: the model's source and LoRA targets (checked on
    a weightless skeleton), the tokenizer, the tokenized training data.

    ``phases`` receives ``load/targets``, ``load/tokenizer`` and ``load/data``.
    """
    phases = phases or PhaseClock()
    resolve_device(cfg.train.device)  # a missing GPU is a config error before anything loads
    with phases.phase("load/targets"):
        source = model_source(cfg.model)
        targets = check_targets(source, cfg)
    with phases.phase("load/tokenizer"):
        tokenizer = load_tokenizer(source, cfg.model)
    with phases.phase("load/data"):
        records = load_records(cfg.data)
        examples = tokenize(records, tokenizer, cfg)
        data_sha256 = records_sha256(records)
    log.info("data: %d examples", len(examples))
    return TrainingData(source, targets, tokenizer, examples, data_sha256)


def load_model(data: TrainingData, cfg: TrainingConfig, phases: PhaseClock | None = None) -> TrainingSetup:
    """Load the quantized model with its adapters onto the trial's device (phases as in
    :func:`qsweep.trainers.model.load_qlora_model`)."""
    qlora = load_qlora_model(cfg, resolve_device(cfg.train.device), source=data.source, targets=data.targets,
                             tokenizer=data.tokenizer, phases=phases)
    return TrainingSetup(qlora=qlora, examples=data.examples, data_sha256=data.data_sha256)


def prepare(cfg: TrainingConfig, phases: PhaseClock | None = None) -> TrainingSetup:
    """Resolve and check everything cheap first, then load data and the quantized model:
    :func:`prepare_data`, then :func:`load_model`."""
    return load_model(prepare_data(cfg, phases), cfg, phases)


def records_sha256(records: list[dict]) -> str:
    """sha256 of the records' canonical JSON: the training data's identity."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def train(cfg: TrainingConfig, workdir: Path, on_step: StepCallback | None = None, *,
          resume: bool = True) -> TrainResult:
    """Prepare and fit: train one trial from its config. See the module docstring."""
    return fit(prepare(cfg), cfg, workdir, on_step, resume=resume)


def fit(setup: TrainingSetup, cfg: TrainingConfig, workdir: Path,
        on_step: StepCallback | None = None, *, resume: bool = True,
        clock: Callable[[], float] = time.perf_counter, before_step: StepHook | None = None) -> TrainResult:
    """Run the optimization loop of ``cfg.train`` on a prepared model and examples.

    Args:
        setup: from :func:`prepare`.
        cfg: the trial config (the same one ``setup`` was prepared with).
        workdir: receives ``checkpoints/`` and ``adapter/``.
        on_step: called after every optimizer step.
        resume: continue from the newest checkpoint in ``workdir`` if there is one.
        clock: seconds, for throughput (injectable for tests).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    train_cfg = cfg.train
    qlora = setup.qlora
    model, device = qlora.model, qlora.device
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(trainable, train_cfg, device)
    scheduler = build_scheduler(optimizer, train_cfg)
    config_hash = cfg.content_hash()
    autocast = _autocast(cfg, device)

    step, position, last_loss, kept_micro_batch, kept_packing = 0, 0, None, None, None
    contents, damaged = ckpt.newest_intact(workdir, device) if resume else (None, [])
    for problem in damaged:
        log.warning("damaged checkpoint %s: set aside", problem)
    if contents is not None:
        _check_same_config(contents.path, contents.state, cfg, config_hash)
        state = ckpt.restore(contents, model, optimizer, scheduler)
        del contents  # its optimizer state is a second copy until restored
        step, position, last_loss = state.step, state.position, state.last_loss
        kept_micro_batch, kept_packing = state.micro_batch_size, state.packed
        log.info("resuming from step %d", step)
    elif damaged:
        log.warning("no intact checkpoint left: training starts over from step 0")
    resumed_from = step
    packing = choose_packing(train_cfg.packing, several_per_micro_batch(train_cfg), device, model,
                             kept=kept_packing)
    packed = packing.packed
    layout = choose_layout(cfg, setup, device, autocast, kept=kept_micro_batch, packed=packed)
    micro, accum = layout.micro_batch_size, layout.grad_accum_steps
    if train_cfg.auto_layout:
        log.info("micro-batch %d x %d accumulation steps (%s)", micro, accum, layout.chosen)
        order: BatchOrder = StepOrder(len(setup.examples), micro, train_cfg.seed)
    else:
        order = BatchOrder(len(setup.examples), micro, train_cfg.seed)

    make_batch = batch_maker(packed, qlora.tokenizer)
    if packed:
        log.info("packing: each micro-batch in one row, attention per example (%s; %s)",
                 "torch's variable-length Flash Attention" if device.type == "cuda"
                 else "SDPA, one example at a time", packing.why)
    elif train_cfg.packing == "auto":
        log.info("padding each micro-batch to its longest example (packing %s)", packing.why)
    meter = MemoryMeter(device)
    meter.reset()
    lengths = [len(example.input_ids) for example in setup.examples]
    history: list[StepMetrics] = []
    status, reason = TrialStatus.FINISHED, f"trained {train_cfg.max_steps} steps"
    model.train()
    while step < train_cfg.max_steps:
        if before_step is not None:
            before_step(step + 1, micro)
        started = clock()
        step_batches = [order.micro_batch(position + k) for k in range(accum)]
        if train_cfg.group_by_length:
            step_batches = group_by_length(step_batches, lengths)
        batches = [make_batch([setup.examples[i] for i in indices]) for indices in step_batches]
        # Normalize by the step's target tokens, not per micro-batch: every token weighs
        # the same whatever the padding and accumulation. Counted on the host: no sync.
        target_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
        tokens = sum(real_tokens(b) for b in batches)
        loss_total = torch.zeros((), device=device)
        for batch in batches:
            batch = to_device(batch, device)
            with packed_attention(model, packed):
                with autocast:
                    # Keep only the loss: holding the output would keep the logits (the largest
                    # activation) alive through the backward pass.
                    loss = model(**batch, num_items_in_batch=target_tokens).loss
                loss.backward()
            loss_total += loss.detach().float()
            del loss
        max_norm = train_cfg.max_grad_norm if train_cfg.max_grad_norm > 0 else math.inf
        grad_norm_t = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        learning_rate = optimizer.param_groups[0]["lr"]
        # Step before reading loss and norm back: the host queues the optimizer's kernels
        # while the GPU still runs the backward pass. A non-finite step corrupts only the
        # adapter of a run that ends here anyway; checkpoints hold the last good state.
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss, grad_norm = float(loss_total), float(grad_norm_t)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what = "loss" if not math.isfinite(loss) else "gradient norm"
            value = loss if not math.isfinite(loss) else grad_norm
            status, reason = TrialStatus.NAN, f"{what} became {value} at step {step + 1}"
            log.warning("stopping: %s", reason)
            break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = clock() - started
        step += 1
        position += accum
        last_loss = loss
        metrics = StepMetrics(
            step=step, loss=loss, learning_rate=learning_rate, grad_norm=grad_norm,
            tokens=tokens, tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
            step_time_s=elapsed, peak_memory_bytes=meter.peak_bytes(),
            epoch=order.epoch(position),
        )
        history.append(metrics)
        if on_step is not None:
            on_step(metrics)
        every = train_cfg.checkpoint_every
        if every and (step % every == 0 or step == train_cfg.max_steps):
            state = ckpt.TrainerState(step=step, position=position, last_loss=last_loss,
                                      config_hash=config_hash, config=cfg.identity(), micro_batch_size=micro,
                                      packed=packed)
            ckpt.save_checkpoint(workdir, model, optimizer, scheduler, state,
                                 keep=train_cfg.keep_checkpoints, final=step == train_cfg.max_steps)

    adapter_dir = None
    if status == TrialStatus.FINISHED:
        adapter_dir = workdir / "adapter"
        model.save_pretrained(adapter_dir, safe_serialization=True)
    train_time = sum(m.step_time_s for m in history)
    return TrainResult(
        status=status,
        reason=reason,
        steps=step,
        final_loss=last_loss,
        tokens_per_s=sum(m.tokens for m in history) / train_time if train_time else 0.0,
        peak_memory_bytes=meter.peak_bytes(),
        memory_kind=meter.kind,
        footprint=qlora.footprint,
        trainable_params=qlora.trainable_params,
        adapter_dir=adapter_dir,
        resumed_from_step=resumed_from, damaged_checkpoints=damaged,
        train_time_s=train_time,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        packed=packed,
        history=history,
    )


def several_per_micro_batch(train_cfg: TrainConfig) -> bool:
    """Whether a micro-batch can hold more than one example (else packing has nothing to do)."""
    if train_cfg.auto_layout:
        return (train_cfg.batch_size or 1) > 1
    return train_cfg.micro_batch_size > 1


def choose_layout(cfg: TrainingConfig, setup: TrainingSetup, device: torch.device, autocast: Any,
                  kept: int | None = None, packed: bool = False) -> BatchLayout:
    """The run's micro-batch and accumulation: the config's, or with ``micro_batch_size: auto``
    the checkpoint's (``kept``) or the largest that fits (see :mod:`qsweep.trainers.layout`)."""
    train_cfg = cfg.train
    if not train_cfg.auto_layout:
        return BatchLayout(train_cfg.micro_batch_size, train_cfg.grad_accum_steps, "configured")
    batch = train_cfg.batch_size
    if kept:
        return BatchLayout(kept, batch // kept, "kept from the checkpoint")
    if device.type != "cuda":
        return BatchLayout(batch, 1, "on CPU: the whole step in one micro-batch")
    budget = (int(train_cfg.max_memory_gib * GIB) if train_cfg.max_memory_gib
              else default_budget_bytes(device))
    by_length = sorted(setup.examples, key=lambda example: -len(example.input_ids))
    longest = by_length[0]
    seq_len = len(longest.input_ids)
    packing = packed
    make_batch = batch_maker(packed, setup.qlora.tokenizer)

    def worst_case(micro: int) -> list[Example]:
        # the most memory a micro-batch can take: padded, micro rows of the longest example;
        # packed, the micro longest examples end to end in one row
        return by_length[:micro] if packing else [longest] * micro
    shape = shape_of(model_source(cfg.model))
    trainable = sum(p.numel() for p in setup.qlora.model.parameters() if p.requires_grad)
    optimizer_state = trainable * (2 if train_cfg.optimizer == "paged_adamw_8bit" else 8)
    probed: dict[int, int | None] = {}
    fused = setup.qlora.kernels.startswith("liger")

    def fits(micro: int) -> bool:
        rows, row_len = (1, sum(len(e.input_ids) for e in worst_case(micro))) if packing else (micro, seq_len)
        estimate = (training_cost(cfg, shape, micro_batch_size=rows, seq_len=row_len,
                                  fused_cross_entropy=fused).peak_bytes if shape is not None else None)
        if estimate is not None and estimate > budget:
            log.info("micro-batch %d: estimated %.1f GiB, over the %.1f GiB budget", micro,
                     estimate / GIB, budget / GIB)
            return False  # the estimate rules it out: not worth a probe
        peak = probe_peak_bytes(setup.qlora.model, make_batch(worst_case(micro)), device, autocast,
                                packed=packing)
        probed[micro] = None if peak is None else peak + optimizer_state
        log.info("micro-batch %d: probe %s", micro, "ran out of memory" if peak is None else
                 f"peaked at {peak / GIB:.1f} GiB (+{optimizer_state / GIB:.1f} GiB optimizer state)")
        return probed[micro] is not None and probed[micro] <= budget

    micro = largest_fitting(batch, fits)
    measured = probed.get(micro)
    probed_what = (f"the {micro} longest examples packed ({sum(len(e.input_ids) for e in worst_case(micro))} "
                   "tokens)" if packing else f"{micro} copies of the longest example ({seq_len} tokens)")
    found = (f"{probed_what} peaked at {measured / GIB:.1f} GiB with the optimizer state" if measured
             else "nothing larger fit")
    return BatchLayout(micro, batch // micro, f"auto: {found}, budget {budget / GIB:.1f} GiB")


def batch_maker(packed: bool, tokenizer: Any) -> Callable[[list[Example]], dict[str, Any]]:
    """How a micro-batch's examples become model inputs: packed in one row (see
    :func:`~qsweep.trainers.packing.choose_packing`) or right-padded to the longest."""
    if packed:
        return pack
    pad_id = tokenizer.pad_token_id
    return lambda examples: collate(examples, pad_id)


def _autocast(cfg: TrainingConfig, device: torch.device) -> contextlib.AbstractContextManager:
    dtype = DTYPES[cfg.quant.compute_dtype]
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_same_config(latest: Path, state: ckpt.TrainerState, cfg: TrainingConfig, config_hash: str) -> None:
    if state.config_hash == config_hash:
        return
    now = cfg.identity()
    diffs = [
        f"{section}.{key}: {state.config.get(section, {}).get(key)!r} -> {value!r}"
        for section, values in now.items()
        for key, value in values.items()
        if state.config.get(section, {}).get(key) != value
    ]
    raise ResumeMismatch(
        f"{latest} was written by a different configuration ({'; '.join(diffs[:5])}); "
        "use another work directory, or start over without resuming"
    )
