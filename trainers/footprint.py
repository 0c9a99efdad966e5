"""Bytes that the frozen base model occupies, quantization constants included.

QLoRA's memory story is in these numbers: 4-bit weights plus one absmax per 64-weight block
(32 bits / 64 = 0.5 bits per parameter), which double quantization shrinks to an 8-bit absmax
plus one 32-bit constant per 256 blocks (8/64 + 32/(64*256) = 0.127 bits): a saving of about
0.373 bits per parameter of every 4-bit layer.

Lookup tables (the 16 NF4/FP4 code values, the 256-entry map of double quantization) are the
same for every layer and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightFootprint:
    """Storage of the base model's weights, adapters excluded."""

    total_bytes: int
    """Every base weight, in its stored dtype, with per-block quantization constants."""
    quantized_params: int
    """Parameters stored in 4 or 8 bits."""
    quantized_bytes: int
    """Bytes of those parameters, constants included."""

    @property
    def bits_per_quantized_param(self) -> float:
        """Average storage bits of a quantized parameter (NF4: 4.5; NF4+DQ: about 4.127)."""
        if not self.quantized_params:
            return 0.0
        return 8 * self.quantized_bytes / self.quantized_params


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def _linear4bit_bytes(weight: torch.Tensor) -> tuple[int, int]:
    state = weight.quant_state
    params = int(torch.Size(state.shape).numel())
    stored = _nbytes(weight) + _nbytes(state.absmax)
    if state.nested:
        stored += _nbytes(state.state2.absmax) + _nbytes(state.offset)
    return params, stored


def _linear8bit_bytes(module: torch.nn.Module) -> tuple[int, int]:
    weight = module.weight
    scales = getattr(weight, "SCB", None)
    if scales is None:
        scales = getattr(getattr(module, "state", None), "SCB", None)
    return weight.numel(), _nbytes(weight) + _nbytes(scales)


def measure(model: torch.nn.Module) -> WeightFootprint:
    """Footprint of ``model``'s base weights (LoRA parameters are skipped)."""
    import bitsandbytes as bnb

    counted: set[int] = set()
    quantized_params = quantized_bytes = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            params, stored = _linear4bit_bytes(module.weight)
        elif isinstance(module, bnb.nn.Linear8bitLt):
            params, stored = _linear8bit_bytes(module)
        else:
            continue
        counted.add(id(module.weight))
        quantized_params += params
        quantized_bytes += stored
    other_bytes = sum(
        _nbytes(p)
        for name, p in model.named_parameters()
        if id(p) not in counted and "lora_" not in name
    )
    return WeightFootprint(
        total_bytes=quantized_bytes + other_bytes,
        quantized_params=quantized_params,
        quantized_bytes=quantized_bytes,
    )
