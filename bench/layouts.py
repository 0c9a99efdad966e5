"""Micro-batch layouts on a GPU: real tokens/s and peak memory through ``qsweep train``.

The trial of ``trial-8b.yaml`` (Llama-3-8B shape, NF4+DQ, LoRA r=64 on every linear layer,
gradient checkpointing, ``mmlu-heldout``: about 150 tokens an example) at the paper's effective
batch of 16 examples per step, laid out as:

* ``paper``: micro-batch 1 x 16 accumulation steps (qlora.py's recipe);
* ``plain``: micro-batch 4 x 4, the step's micro-batches as drawn;
* ``grouped``: micro-batch 4 x 4 with ``train.group_by_length``;
* ``auto``: ``train.micro_batch_size: auto`` with ``train.batch_size: 16``;
* ``plain-liger``, ``auto-liger``: the same with ``train.kernels: auto`` (Liger Kernel);
* ``micro32``, ``auto32-liger``, ``auto32-liger-14g``: 32 examples a step, as one micro-batch,
  and auto with Liger's kernels, unbounded and within 14.2 GiB;
* ``...-packed``, ``packed32...``: the same layouts with ``train.packing`` (each micro-batch in
  one row, attention per example through torch's variable-length Flash Attention).

``--set KEY=VALUE`` adds an override to every variant (``--set lora.dropout=0`` for a check
that packed and padded layouts give the same first-step loss).

Variants alternate, each in a fresh process and work directory. The trainer counts real tokens
only (padding excluded), so tokens/s compares the layouts directly.

    source bench/gpu_setup.sh
    python3 bench/layouts.py --variants plain,grouped --repeats 2 --out $OUT/group_by_length.json
    python3 bench/layouts.py --variants paper,plain,auto --repeats 1 --out $OUT/layouts.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACKED32 = ["train.micro_batch_size=32", "train.grad_accum_steps=1", "train.packing=true"]
PACKED16 = ["train.micro_batch_size=16", "train.grad_accum_steps=1", "train.packing=true"]
VARIANTS = {
    "paper": ["train.micro_batch_size=1", "train.grad_accum_steps=16"],
    "plain": ["train.micro_batch_size=4", "train.grad_accum_steps=4"],
    "grouped": ["train.micro_batch_size=4", "train.grad_accum_steps=4", "train.group_by_length=true"],
    "auto": ["train.micro_batch_size=auto", "train.batch_size=16"],
    "plain-liger": ["train.micro_batch_size=4", "train.grad_accum_steps=4", "train.kernels=auto"],
    "auto-liger": ["train.micro_batch_size=auto", "train.batch_size=16", "train.kernels=auto"],
    # 32 examples a step (issue 11's comparison: the plain loop padded at micro-batch 32)
    "micro32": ["train.micro_batch_size=32", "train.grad_accum_steps=1"],
    "auto32-liger": ["train.micro_batch_size=auto", "train.batch_size=32", "train.kernels=auto"],
    "auto32-liger-14g": ["train.micro_batch_size=auto", "train.batch_size=32", "train.kernels=auto",
                         "train.max_memory_gib=14.2"],
    # packing (train.packing): each micro-batch in one row, attention per example (varlen)
    "auto-packed": ["train.micro_batch_size=auto", "train.batch_size=16", "train.packing=true"],
    "auto-packed-liger": ["train.micro_batch_size=auto", "train.batch_size=16", "train.packing=true",
                          "train.kernels=auto"],
    "plain-packed": ["train.micro_batch_size=4", "train.grad_accum_steps=4", "train.packing=true"],
    "packed32": ["train.micro_batch_size=32", "train.grad_accum_steps=1", "train.packing=true"],
    "packed32-liger": ["train.micro_batch_size=32", "train.grad_accum_steps=1", "train.packing=true",
                       "train.kernels=auto"],
    "auto32-packed-liger-14g": ["train.micro_batch_size=auto", "train.batch_size=32", "train.packing=true",
                                "train.kernels=auto", "train.max_memory_gib=14.2"],
    # relaxed gradient checkpointing (train.uncheckpointed_layers): the last N layers keep activations
    "packed32-liger-relax4": ["train.micro_batch_size=32", "train.grad_accum_steps=1", "train.packing=true",
                              "train.kernels=auto", "train.uncheckpointed_layers=4"],
    "packed32-liger-relax8": ["train.micro_batch_size=32", "train.grad_accum_steps=1", "train.packing=true",
                              "train.kernels=auto", "train.uncheckpointed_layers=8"],
    # unconstrained memory: no checkpointing at all
    "packed32-liger-nockpt": ["train.micro_batch_size=32", "train.grad_accum_steps=1", "train.packing=true",
                              "train.kernels=auto", "train.gradient_checkpointing=false"],
    # compiled decoder layers (train.compile), embeddings in bf16 (train.fp32_embeddings=false)
    "packed32-compile": [*PACKED32, "train.compile=true"],
    "packed32-compile-bf16emb": [*PACKED32, "train.compile=true", "train.fp32_embeddings=false"],
    "packed32-compile-bf16emb-relax4": [*PACKED32, "train.compile=true", "train.fp32_embeddings=false",
                                        "train.uncheckpointed_layers=4"],
    "packed32-compile-liger-bf16emb": [*PACKED32, "train.compile=true", "train.fp32_embeddings=false",
                                       "train.kernels=auto"],
    "packed32-compile-bf16emb-nockpt": [*PACKED32, "train.compile=true", "train.fp32_embeddings=false",
                                        "train.gradient_checkpointing=false"],
    "packed32-compile-flce": [*PACKED32, "train.compile=true", "train.kernels=auto"],
    "packed32-compile-flce-relax4": [*PACKED32, "train.compile=true", "train.kernels=auto",
                                     "train.uncheckpointed_layers=4"],
    # torch's fused AdamW in place of bitsandbytes' paged one (the same update rule, fp32 states)
    "packed32-compile-bf16emb-adamw": [*PACKED32, "train.compile=true", "train.fp32_embeddings=false",
                                       "train.optimizer=adamw"],
    "packed32-compile-bf16emb-nockpt-adamw": [*PACKED32, "train.compile=true", "train.fp32_embeddings=false",
                                              "train.gradient_checkpointing=false", "train.optimizer=adamw"],
    # more examples a step without checkpointing: more tokens per forward pass
    "packed64-compile-bf16emb-nockpt-adamw": ["train.micro_batch_size=64", "train.grad_accum_steps=1",
                                              "train.packing=true", "train.compile=true",
                                              "train.fp32_embeddings=false",
                                              "train.gradient_checkpointing=false", "train.optimizer=adamw"],
    "packed128-compile-bf16emb-nockpt-adamw": ["train.micro_batch_size=128", "train.grad_accum_steps=1",
                                               "train.packing=true", "train.compile=true",
                                               "train.fp32_embeddings=false",
                                               "train.gradient_checkpointing=false", "train.optimizer=adamw"],
    "packed16": [*PACKED16],
    "packed16-compile-bf16emb": [*PACKED16, "train.compile=true", "train.fp32_embeddings=false"],
}


def run(variant: str, args: argparse.Namespace, index: int) -> dict:
    workdir = Path(args.work) / f"{variant}-{index}"
    shutil.rmtree(workdir, ignore_errors=True)
    config = ROOT / "bench" / "trial-8b.yaml"
    command = [sys.executable, "-m", "qsweep.orchestrator.cli", "train", str(config), *VARIANTS[variant],
               *args.set,
               f"train.max_steps={args.steps}", "train.checkpoint_every=0", f"--workdir={workdir}"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"variant": variant, "error": done.stderr[-2000:], "wall_s": round(wall, 1)}
    summary = json.loads((workdir / "result.json").read_text())
    steps = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    timed = steps[args.warmup:]  # the first steps include CUDA warm-up
    tokens, seconds = sum(s["tokens"] for s in timed), sum(s["step_time_s"] for s in timed)
    said = [line.strip() for line in (done.stdout + done.stderr).splitlines()
            if "kernels:" in line or "packing:" in line or "micro-batch" in line]
    return {"variant": variant, "wall_s": round(wall, 1), "steps": len(steps), "said": said[-6:],
            "micro_batch_size": summary.get("micro_batch_size"),
            "grad_accum_steps": summary.get("grad_accum_steps"),
            "tokens_per_s_after_warmup": round(tokens / seconds, 1),
            "tokens_per_s_reported": summary.get("tokens_per_s"),
            "peak_memory_gib": round(max(s["peak_memory_bytes"] for s in steps) / 2**30, 2),
            "losses": [round(s["loss"], 4) for s in steps]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default="plain,grouped", help=", ".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", default="/tmp/layouts")
    parser.add_argument("--set", action="append", default=[], help="override for every variant")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    variants = args.variants.split(",")
    runs: list[dict] = []
    for i in range(args.repeats):
        for variant in variants:
            runs.append(run(variant, args, i))
            # written after every run: a command cut short keeps what it measured
            Path(args.out).write_text(json.dumps({"variants": {v: VARIANTS[v] for v in variants},
                                                  "set": args.set, "steps": args.steps, "runs": runs},
                                                 indent=1))
    medians = {variant: statistics.median(r["tokens_per_s_after_warmup"] for r in runs
                                          if r["variant"] == variant and "error" not in r)
               for variant in variants if any(r["variant"] == variant and "error" not in r for r in runs)}
    result = {"variants": {v: VARIANTS[v] for v in variants}, "set": args.set, "steps": args.steps,
              "warmup": args.warmup, "runs": runs, "median_tokens_per_s": medians,
              "environment": environment()}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=1))


if __name__ == "__main__":
    main()
