"""Where a training step's time goes on a GPU: ``torch.profiler`` over a few steps of ``fit``.

Loads the trial of ``trial-8b.yaml`` with the given overrides, as ``qsweep train`` does, trains
``--warmup`` steps, then profiles ``--steps`` more and reports:

* the wall time of the profiled steps against the GPU's kernel time in them (how much of the
  step the GPU computes; the rest it waits for the host to launch work);
* the CUDA kernels that take the most GPU time, grouped by kind (matrix products, 4-bit
  dequantization, attention, elementwise and the rest);
* the host-side operators that take the most CPU time.

::

    source bench/gpu_setup.sh
    python3 bench/profile_step.py --out $OUT/profile.json train.micro_batch_size=32 \\
        train.grad_accum_steps=1 train.packing=true train.kernels=auto
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = (  # kernel name fragments, in the order they are tried
    ("dequantize (bitsandbytes)", ("dequant", "kDequantize")),
    ("matrix product", ("gemm", "gemv", "cutlass", "sm90_xmma", "cublas", "nvjet", "matmul")),
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("cross-entropy / fused loss", ("cross_entropy", "liger", "_fused_linear", "log_softmax", "nll")),
    ("optimizer", ("adam", "optimizer", "multi_tensor")),
    ("copy / cast", ("copy", "memcpy", "memset", "cast")),
    ("elementwise / reduction", ("elementwise", "reduce", "vectorized", "unrolled", "triton")),
)


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, fragments in KINDS:
        if any(fragment.lower() in lowered for fragment in fragments):
            return kind
    return "other"


def experiment(model, args: argparse.Namespace) -> None:
    """Changes tried here before they become options (``--compile-layers``, ``--bf16-embeddings``)."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    if args.bf16_embeddings:
        for name, module in model.named_modules():
            if name.endswith(("embed_tokens", "lm_head")) and getattr(module, "weight", None) is not None:
                module.to(torch.bfloat16)
    if args.compile_layers:
        for module in model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.compile(dynamic=True)


def dynamo_counters() -> dict:
    """What torch.compile did: frames compiled, graph breaks by reason (the first 10)."""
    from torch._dynamo.utils import counters

    breaks = sorted(counters["graph_break"].items(), key=lambda kv: -kv[1])[:10]
    return {"stats": dict(counters["stats"]), "graph_breaks": [[reason[:200], n] for reason, n in breaks]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(ROOT / "bench" / "trial-8b.yaml"))
    parser.add_argument("--no-profile", action="store_true", help="time the steps only (no profiler)")
    parser.add_argument("--compile-layers", action="store_true",
                        help="experiment: torch.compile each decoder layer after loading")
    parser.add_argument("--bf16-embeddings", action="store_true",
                        help="experiment: embeddings and LM head in bf16 (qlora.py's recipe)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import torch
    from qsweep.orchestrator.trial.config import load_trial_config
    from qsweep.trainers.loop import fit, prepare
    from torch.profiler import ProfilerActivity, profile

    overrides = [*args.overrides, f"train.max_steps={args.warmup + args.steps}", "train.checkpoint_every=0"]
    cfg = load_trial_config(Path(args.config), overrides)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    setup = prepare(cfg)
    experiment(setup.qlora.model, args)
    profiler = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    if args.no_profile:
        profiler.start = profiler.stop = lambda: None  # type: ignore[method-assign]
    window: dict[str, float] = {}

    def before_step(step: int, micro: int) -> None:
        if step == args.warmup + 1:
            sync()
            profiler.start()
            window["start"] = time.perf_counter()

    steps = []

    def on_step(metrics) -> None:
        steps.append(metrics.to_dict())
        if metrics.step == args.warmup + args.steps:
            sync()
            window["end"] = time.perf_counter()
            profiler.stop()

    with tempfile.TemporaryDirectory() as workdir:
        result = fit(setup, cfg, Path(workdir), on_step, before_step=before_step)
    wall = window["end"] - window["start"]
    events = [] if args.no_profile else profiler.key_averages()
    recorded = [] if args.no_profile else profiler.events()
    kernels: dict[str, float] = {}
    by_kind: dict[str, float] = {}
    for event in recorded:
        if event.device_type == torch.autograd.DeviceType.CUDA:
            micros = event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
            kernels[event.name] = kernels.get(event.name, 0.0) + micros / 1e6
            by_kind[kind_of(event.name)] = by_kind.get(kind_of(event.name), 0.0) + micros / 1e6
    gpu_s = sum(kernels.values())
    top_kernels = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    host_ops = sorted(((e.key, e.self_cpu_time_total / 1e6, e.count) for e in events),
                      key=lambda row: -row[1])[:25]
    profiled = steps[args.warmup:]
    report = {
        "overrides": args.overrides, "compile_layers": args.compile_layers,
        "bf16_embeddings": args.bf16_embeddings, "profiled": not args.no_profile,
        "losses": [round(s["loss"], 4) for s in steps], "micro_batch_size": result.micro_batch_size,
        "grad_accum_steps": result.grad_accum_steps, "profiled_steps": len(profiled),
        "tokens_per_step": [s["tokens"] for s in profiled],
        "tokens_per_s_profiled": round(sum(s["tokens"] for s in profiled) / wall, 1),
        "wall_s": round(wall, 3), "gpu_kernel_s": round(gpu_s, 3),
        "gpu_busy_share": round(gpu_s / wall, 3) if recorded else None,
        "gpu_s_by_kind": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
        "top_kernels_s": [[name[:120], round(s, 4)] for name, s in top_kernels],
        "top_host_ops_self_s": [[name[:80], round(s, 4), count] for name, s, count in host_ops],
        "kernel_launches": sum(e.device_type == torch.autograd.DeviceType.CUDA for e in recorded),
        "peak_memory_gib": round(result.peak_memory_bytes / 2**30, 2),
        "dynamo": dynamo_counters() if args.compile_layers else None,
        "environment": environment(),
    }
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("top_host_ops_self_s", "environment")},
                     indent=1))


if __name__ == "__main__":
    main()
