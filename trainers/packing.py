"""Packing (``train.packing``): a micro-batch's examples laid end to end in one row, without
padding, each attending only to itself.

Transformers' own packed path builds a dense block-diagonal mask over the whole row, which makes
attention quadratic in the row's length; here attention runs over each example alone:

* on CUDA through ``torch.nn.attention.varlen.varlen_attn`` (Flash Attention inside torch, no
  package to build), given the examples' boundaries (``cu_seq_lens_q``);
* elsewhere (CPU runs and tests) with SDPA over each example in turn: exact, not fast.

:func:`pack` builds the row: position ids restart at 0 for each example, and each example's
first label is ignored, so no token learns to predict the next example; the targets are those
of the padded layout, one for one. The attention is installed only around a packed
micro-batch's forward and backward passes (:func:`packed_attention`): evaluation and any other
use of the model see its usual attention (and a padded batch inside it gets SDPA with its mask).

Whether a run packs (:func:`choose_packing`): as ``train.packing`` says when it is true or
false; with ``auto`` (the default), wherever packing measured faster than padding
(bench/README.md, "Packing a micro-batch into one row"): a micro-batch of several examples on a
CUDA GPU that runs torch's variable-length Flash Attention, for a model whose attention goes
through transformers' attention interface, without attention dropout.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from qsweep.trainers.examples import IGNORE_INDEX, Example

PACKED_ATTENTION = "qsweep_packed"
"""The name under which transformers' attention registry knows :func:`packed_attention_forward`."""


@dataclass(frozen=True)
class PackingChoice:
    """Whether a run packs its micro-batches, and why (logged, and recorded on the run)."""

    packed: bool
    why: str


def choose_packing(setting: bool | str, several_per_micro_batch: bool, device: torch.device,
                   model: Any, kept: bool | None = None) -> PackingChoice:
    """``train.packing`` for this run: true or false as configured; ``auto`` packs where it pays
    and the kernel runs (see the module docstring), and says what ruled it out otherwise. A run
    resumed from a checkpoint of an auto run keeps that run's choice (``kept``; its micro-batch
    may have been chosen for packed rows) where this machine can run it: anywhere but on a GPU
    without the kernel."""
    if setting != "auto":
        return PackingChoice(bool(setting), "configured")
    reason = _why_not_packed(several_per_micro_batch, device, model)
    if kept is not None and kept != (reason is None):
        if not kept:
            return PackingChoice(False, "auto: not packed, as the run it resumes did not pack")
        if device.type != "cuda":
            return PackingChoice(True, "auto: packed, as the run it resumes did")
        return PackingChoice(False, f"auto: not packed though the run it resumes did, {reason}")
    if reason:
        return PackingChoice(False, f"auto: not packed, {reason}")
    return PackingChoice(True, "auto: packed, torch's variable-length Flash Attention on CUDA")


def _why_not_packed(several_per_micro_batch: bool, device: torch.device, model: Any) -> str | None:
    if not several_per_micro_batch:
        return "one example a micro-batch (nothing to pack)"
    if device.type != "cuda":
        return f"on {device.type} (the variable-length attention kernel is CUDA's)"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "Flash Attention needs a GPU of compute capability 8.0 or later"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen (2.10 or later has)"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(type(base), "_supports_attention_backend", False):
        return f"{type(base).__name__} does not take attention through transformers' interface"
    if getattr(base.config, "attention_dropout", 0.0):
        return "the model's attention dropout is not 0"
    return None


def pack(examples: list[Example]) -> dict[str, Any]:
    """One row of the examples end to end, with what attention needs to keep them apart.

    Returns host tensors (and two ints) to pass to the model as keyword arguments.
    """
    lengths = [len(e.input_ids) for e in examples]
    ids = [token for e in examples for token in e.input_ids]
    labels = [label for e in examples for label in (IGNORE_INDEX, *e.labels[1:])]
    positions = [p for n in lengths for p in range(n)]
    bounds = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    longest = max(lengths)
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
            "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds,
            "max_length_q": longest, "max_length_k": longest}


def real_tokens(batch: dict[str, Any]) -> int:
    """Tokens of a padded (``attention_mask``) or packed batch that are not padding."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


@contextlib.contextmanager
def packed_attention(model: Any, on: bool = True) -> Iterator[None]:
    """Within the block (forward and backward: gradient checkpointing recomputes attention in
    the backward pass), ``model`` attends with :func:`packed_attention_forward`."""
    if not on:
        yield
        return
    _register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                             value: torch.Tensor, attention_mask: torch.Tensor | None,
                             dropout: float = 0.0, scaling: float | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Attention over each packed example; transformers' SDPA for an unpacked batch.

    ``query`` is (batch, heads, tokens, head_dim) as transformers passes it; returns
    (batch, tokens, heads, head_dim) as its attention functions do.
    """
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if dropout:
        raise ValueError("train.packing: the model's attention dropout must be 0")
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, got {query.shape[0]}")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    if query.device.type == "cuda":
        out = _varlen(q, k, v, bounds, int(kwargs["max_length_q"]), scaling)
    else:
        out = _each_example(q, k, v, bounds, scaling)
    return out.unsqueeze(0), None


def _varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor, longest: int,
            scaling: float | None) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    accepts = _varlen_parameters()
    options: dict[str, Any] = {"scale": scaling}
    if "window_size" in accepts:
        options["window_size"] = (-1, 0)  # causal
    else:
        options["is_causal"] = True
    if k.shape[1] != q.shape[1]:  # grouped-query attention
        if "enable_gqa" in accepts:
            options["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    dtype = q.dtype
    if dtype not in (torch.float16, torch.bfloat16):  # Flash Attention computes in 16 bits
        half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        q, k, v = q.to(half), k.to(half), v.to(half)
    out = varlen_attn(q, k, v, bounds, bounds, longest, longest, **options)
    return out.to(dtype)


@functools.cache
def _varlen_parameters() -> frozenset[str]:
    """The keyword arguments this torch's ``varlen_attn`` takes (they differ across 2.10-2.12);
    read once, not in every layer's attention."""
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _each_example(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: torch.Tensor,
                  scaling: float | None) -> torch.Tensor:
    edges = bounds.tolist()
    outs = []
    for start, end in zip(edges, edges[1:], strict=False):
        one = [t[start:end].transpose(0, 1) for t in (q, k, v)]  # (heads, tokens, head_dim)
        out = F.scaled_dot_product_attention(*one, is_causal=True, scale=scaling,
                                             enable_gqa=one[1].shape[0] != one[0].shape[0])
        outs.append(out.transpose(0, 1))
    return torch.cat(outs)


def _packed_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """The attention mask transformers builds for a batch: none for a packed row (its examples
    are kept apart by their boundaries, not by a mask), SDPA's for a padded batch."""
    if kwargs.get("attention_mask") is None:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, _packed_mask)
