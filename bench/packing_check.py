"""Packed attention on a GPU against attention over each example alone (``train.packing``).

The CPU tests check packing with the per-example SDPA path; on CUDA, packed rows go through
torch's variable-length Flash Attention (``torch.nn.attention.varlen``), which only a GPU runs.
This compares the two on the Llama-3-8B attention shape (32 query heads, 8 key/value heads,
head dim 128, bf16) for rows of examples with mmlu-heldout-like lengths: outputs and the
gradients of query, key and value. For scale it also reports how far off attention is when
examples leak into each other (one causal pass over the whole row), which a packing bug would
produce::

    source bench/gpu_setup.sh && python3 bench/packing_check.py --out $OUT/packing_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import environment  # noqa: E402


def attention_inputs(lengths: list[int], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    total = sum(lengths)
    q, k, v = (torch.randn(1, heads, total, 128, generator=generator, device="cuda", dtype=torch.bfloat16)
               for heads in (32, 8, 8))
    return tuple(t.requires_grad_() for t in (q, k, v))


def compare(lengths: list[int], seed: int) -> dict:
    from qsweep.trainers.examples import Example
    from qsweep.trainers.packing import pack, packed_attention_forward

    generator = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = attention_inputs(lengths, generator)
    row = pack([Example((0,) * n, (0,) * n) for n in lengths])
    bounds = row["cu_seq_lens_q"].cuda()
    module = torch.nn.Module()
    packed, _ = packed_attention_forward(module, q, k, v, None, scaling=128 ** -0.5,
                                         cu_seq_lens_q=bounds, max_length_q=max(lengths))
    edges = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    alone = torch.cat([
        F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True,
                                       scale=128 ** -0.5, enable_gqa=True).transpose(1, 2)
        for a, b in zip(edges, edges[1:], strict=False)], dim=1)
    leaking = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=128 ** -0.5,
                                             enable_gqa=True).transpose(1, 2)
    upstream = torch.randn(packed.shape, generator=generator, device="cuda", dtype=packed.dtype)
    grads = {}
    for name, out in (("packed", packed), ("alone", alone)):
        q.grad = k.grad = v.grad = None
        (out.float() * upstream.float()).sum().backward(retain_graph=True)
        grads[name] = [t.grad.float().clone() for t in (q, k, v)]

    def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).abs().max())

    return {"lengths": lengths,
            "output_max_abs_diff": max_diff(packed, alone),
            "output_max_abs": float(alone.float().abs().max()),
            "grad_max_abs_diff_qkv": [max_diff(a, b) for a, b in zip(grads["packed"], grads["alone"],
                                                                        strict=True)],
            "grad_max_abs_qkv": [float(g.abs().max()) for g in grads["alone"]],
            "leaking_output_max_abs_diff": max_diff(leaking, alone)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = [[150, 80, 220, 37], [512], [97] * 16, [3, 1, 400, 2, 64]]
    cases = [compare(lengths, seed) for seed, lengths in enumerate(rows)]
    result = {"cases": cases, "environment": environment()}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
