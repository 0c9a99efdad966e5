"""Training throughput and peak memory: qsweep's trainer against a plain reference loop.

For each configuration, two fresh processes train the same model on the same shapes:

* ``qsweep``: ``qsweep.trainers.loop.prepare`` + ``fit`` from a TrialConfig (what ``qsweep train`` runs);
* ``reference``: the plain transformers + bitsandbytes + peft loop of qlora.py's recipe,
  written out here in a few lines (load quantized, prepare for k-bit training, LoRA r=64 on
  all linear layers, AdamW, clip at 0.3, bf16 autocast).

Each reports tokens/s over the timed steps (after warm-up steps) and the CUDA max allocated
bytes from the start of training (weights included, loading peaks excluded).

On a GPU (Llama-3-8B shape, random weights created there, sequence length 1024)::

    python bench/train_throughput.py --model-dir /tmp/llama3-8b --create --out results.json

Short examples (``--rows mmlu-heldout``): the reference loop trains on the rows ``qsweep trial``
trains on (``mmlu-heldout`` tokenized by qsweep's own data path, response-only labels, 78 real
tokens an example), in seeded random micro-batches padded to their longest row, as the issue's
plain loop did; tokens/s counts real tokens only (padding excluded)::

    python bench/train_throughput.py --model-dir /tmp/llama3-8b --rows mmlu-heldout \
        --impls reference --configs short-padded-mb32,short-padded-mb16 --steps 8

CPU smoke run of the same code (tiny model)::

    python bench/train_throughput.py --model-dir /tmp/tiny --create --shape tiny \\
        --device cpu --seq-len 64 --steps 2 --warmup 1 --configs nf4dq-mb4,bf16-lora-mb4
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import environment, report, run_worker  # noqa: E402

CONFIGS: dict[str, dict] = {
    # name: quantization, gradient checkpointing, micro-batch, optimizer (bench/README.md's rows)
    "qlora-defaults": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=1, optim="paged_adamw_32bit"),
    "nf4dq-ckpt-mb4": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=4, optim="paged_adamw_32bit"),
    "nf4dq-mb4": dict(bits=4, type="nf4", dq=True, ckpt=False, mb=4, optim="adamw"),
    "nf4-mb4": dict(bits=4, type="nf4", dq=False, ckpt=False, mb=4, optim="adamw"),
    "fp4-mb4": dict(bits=4, type="fp4", dq=False, ckpt=False, mb=4, optim="adamw"),
    "bf16-lora-mb4": dict(bits=16, type="nf4", dq=False, ckpt=False, mb=4, optim="adamw"),
    # qsweep only (train.kernels, train.uncheckpointed_layers): sequence length 1024 within the
    # qlora.py defaults' memory, and without a memory constraint
    "qlora-mb2-liger": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=2, optim="paged_adamw_32bit",
                            kernels="auto"),
    "qlora-mb4-liger": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=4, optim="paged_adamw_32bit",
                            kernels="auto"),
    "qlora-mb4-liger-bf16emb": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=4, optim="paged_adamw_32bit",
                                    kernels="auto", bf16emb=True),
    "qlora-mb2-liger-relax4": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=2, optim="paged_adamw_32bit",
                                   kernels="auto", relax=4),
    "qlora-mb2-compile-bf16emb": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=2, optim="paged_adamw_32bit",
                                      compile=True, bf16emb=True),
    "nf4dq-mb4-compile-bf16emb": dict(bits=4, type="nf4", dq=True, ckpt=False, mb=4, optim="adamw",
                                      compile=True, bf16emb=True),
    "nf4dq-mb4-liger": dict(bits=4, type="nf4", dq=True, ckpt=False, mb=4, optim="adamw", kernels="auto"),
    "nf4dq-mb8-liger-relax16": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=8, optim="adamw",
                                    kernels="auto", relax=16),
    "nf4dq-mb16-liger-relax8": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=16, optim="adamw",
                                    kernels="auto", relax=8),
    # short examples, reference only (--rows mmlu-heldout): the plain loop, padded
    "short-padded-mb32": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=32, optim="paged_adamw_32bit"),
    "short-padded-mb16": dict(bits=4, type="nf4", dq=True, ckpt=True, mb=16, optim="paged_adamw_32bit"),
}


def _compute(device: str) -> str:
    return "bf16" if device == "cuda" else "fp32"


def run_qsweep(model_dir: Path, data: Path, spec: dict, args: argparse.Namespace) -> dict:
    """Train through the project's own trainer, as ``qsweep train`` does."""
    from qsweep.trainers.config_loading import validate
    from qsweep.trainers.loop import fit, prepare

    quant = {"bits": spec["bits"], "compute_dtype": _compute(args.device)}
    if spec["bits"] == 4:
        quant.update(type=spec["type"], double_quant=spec["dq"])
    cfg = validate({
        "model": {"name": str(model_dir), "dtype": _compute(args.device)},
        "quant": quant,
        "lora": {"r": 64, "alpha": 16, "dropout": 0.1, "target_modules": "all-linear"},
        "train": {"max_steps": args.warmup + args.steps, "micro_batch_size": spec["mb"],
                  "grad_accum_steps": 1, "learning_rate": 2e-4, "optimizer": spec["optim"],
                  "gradient_checkpointing": spec["ckpt"], "max_source_length": 8,
                  "kernels": spec.get("kernels", "none"), "uncheckpointed_layers": spec.get("relax", 0),
                  "compile": spec.get("compile", False), "fp32_embeddings": not spec.get("bf16emb", False),
                  "max_target_length": args.seq_len, "checkpoint_every": 0,
                  "device": args.device},
        "data": {"path": str(data)},
    })
    setup = prepare(cfg)
    with tempfile.TemporaryDirectory() as workdir:
        result = fit(setup, cfg, Path(workdir))
    timed = result.history[args.warmup:]
    tokens = sum(m.tokens for m in timed)
    seconds = sum(m.step_time_s for m in timed)
    return {"tokens_per_s": tokens / seconds, "peak_bytes": result.peak_memory_bytes,
            "final_loss": result.final_loss, "tokens_per_step": timed[0].tokens}


def run_reference(model_dir: Path, spec: dict, args: argparse.Namespace) -> dict:
    """The plain loop: transformers + bitsandbytes + peft, nothing of qsweep."""
    if any(spec.get(key) for key in ("kernels", "relax", "compile", "bf16emb")):
        raise SystemExit("the reference loop is the plain one: run these with --impls qsweep")
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = torch.device(args.device)
    compute = torch.bfloat16 if args.device == "cuda" else torch.float32
    quantization = None
    if spec["bits"] == 4:
        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec["type"],
                                          bnb_4bit_use_double_quant=spec["dq"],
                                          bnb_4bit_compute_dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=compute,
                                                 quantization_config=quantization,
                                                 device_map={"": str(device)})
    model.config.use_cache = False
    checkpointing = {"use_reentrant": False}
    if quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec["ckpt"],
                                                gradient_checkpointing_kwargs=checkpointing)
    elif spec["ckpt"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()  # from_pretrained returns eval mode: no dropout, no checkpointing
    params = [p for p in model.parameters() if p.requires_grad]
    if spec["optim"] == "paged_adamw_32bit":
        optimizer = bnb.optim.PagedAdamW32bit(params, lr=2e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=2e-4, fused=device.type == "cuda")
    batches = reference_batches(args, spec["mb"], args.warmup + args.steps, model.config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed = 0.0
    tokens = 0
    for step, batch in enumerate(batches):
        batch = {key: value.to(device) for key, value in batch.items()}
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            timed += time.perf_counter() - started
            tokens += int(batch["attention_mask"].sum())
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return {"tokens_per_s": tokens / timed, "peak_bytes": peak, "final_loss": float(loss),
            "tokens_per_step": tokens // args.steps}


def reference_batches(args: argparse.Namespace, micro: int, steps: int, config: Any) -> list[dict]:
    """The reference loop's micro-batches: random ids of ``--seq-len`` (every token trained), or
    with ``--rows``, the rows in ``args.data`` drawn in a seeded random order and padded to the
    longest of each micro-batch (labels -100 and attention mask 0 on padding)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    if args.rows is None:
        ids = torch.randint(0, 256, (micro, args.seq_len), generator=generator)
        return [{"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}] * steps
    rows = [json.loads(line) for line in args.data.read_text().splitlines()]
    order = torch.randperm(len(rows), generator=generator).tolist()
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    batches = []
    for step in range(steps):
        chosen = [rows[order[(step * micro + i) % len(rows)]] for i in range(micro)]
        longest = max(len(row["input_ids"]) for row in chosen)
        batch = {"input_ids": torch.full((micro, longest), pad), "labels": torch.full((micro, longest), -100),
                 "attention_mask": torch.zeros((micro, longest), dtype=torch.long)}
        for i, row in enumerate(chosen):
            n = len(row["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
            batch["labels"][i, :n] = torch.tensor(row["labels"])
            batch["attention_mask"][i, :n] = 1
        batches.append(batch)
    return batches


def write_rows(path: Path, dataset: str, model_dir: Path) -> None:
    """The examples ``qsweep trial`` trains on for ``data.name: dataset`` (qsweep's own template,
    tokenization and labels), one JSON object of token ids and labels a line."""
    from qsweep.trainers.config_loading import validate
    from qsweep.trainers.loop import prepare_data

    cfg = validate({"model": {"name": str(model_dir)}, "data": {"name": dataset}, "train": {"device": "cpu"}})
    with open(path, "w") as handle:
        for example in prepare_data(cfg).examples:
            row = {"input_ids": list(example.input_ids), "labels": list(example.labels)}
            handle.write(json.dumps(row) + "\n")


WORDS = (" the", " of", " and", " to", " in", " is", " that", " for", " it", " as", " with", " was", " on",
         " be", " at", " by", " this", " had", " not", " are", " but", " from", " or", " have", " an")
"""Common words that Llama's and SmolLM2's tokenizers keep as one token each."""


def write_data(path: Path, seq_len: int, model_dir: Path, rows: int = 128) -> None:
    """Rows whose response is seq_len - 1 tokens (one-token words, checked with the model's
    tokenizer): seq_len tokens with EOS, all trained, so qsweep trains on the reference's lengths."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    words = [w for w in WORDS if len(tokenizer.encode(w, add_special_tokens=False)) == 1]
    rng = random.Random(0)
    with open(path, "w") as handle:
        for _ in range(rows):
            text = "".join(rng.choices(words, k=seq_len - 1))
            assert len(tokenizer.encode(text, add_special_tokens=False)) == seq_len - 1
            handle.write(json.dumps({"prompt": "", "response": text}) + "\n")


def worker(args: argparse.Namespace) -> None:
    spec = CONFIGS[args.config]
    if args.impl == "qsweep" and args.rows:
        raise SystemExit("qsweep on a dataset's rows is measured through qsweep trial (trial_gpu.py)")
    if args.impl == "qsweep":
        result = run_qsweep(args.model_dir, args.data, spec, args)
    else:
        result = run_reference(args.model_dir, spec, args)
    report(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--create", action="store_true", help="create the model if missing")
    parser.add_argument("--shape", default="llama3-8b")
    parser.add_argument("--vocab-size", type=int, default=128_256)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--rows", default=None, help="train the reference on a dataset's rows "
                        "(mmlu-heldout) instead of random ids of --seq-len")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--impls", default="reference,qsweep")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    if args.create and not (args.model_dir / "config.json").exists():
        import torch
        from qsweep.trainers.random_model import write_random_llama

        started = time.perf_counter()
        write_random_llama(args.model_dir, args.shape, dtype=torch.bfloat16, device=args.device,
                           vocab_size=args.vocab_size if args.shape != "tiny" else None)
        print(f"created {args.shape} in {time.perf_counter() - started:.0f} s", flush=True)
    if args.rows:
        data = args.model_dir.parent / f"bench-rows-{args.rows}.jsonl"
        write_rows(data, args.rows, args.model_dir)
    else:
        data = args.model_dir.parent / f"bench-data-{args.seq_len}.jsonl"
        write_data(data, args.seq_len, args.model_dir)

    results = []
    for name in args.configs.split(","):
        for impl in args.impls.split(","):
            row = {"config": name, "impl": impl, **CONFIGS[name], **run_worker([
                __file__, "--worker", f"--impl={impl}", f"--config={name}", f"--model-dir={args.model_dir}",
                f"--data={data}", f"--device={args.device}", f"--seq-len={args.seq_len}",
                f"--steps={args.steps}", f"--warmup={args.warmup}",
                *([f"--rows={args.rows}"] if args.rows else [])])}
            results.append(row)
            shown = {k: v for k, v in row.items() if k in ("config", "impl", "tokens_per_s",
                                                           "peak_bytes", "wall_s", "error")}
            print(json.dumps(shown), flush=True)
            if args.out:
                payload = {"environment": environment(), "seq_len": args.seq_len, "rows": args.rows,
                           "steps": args.steps, "warmup": args.warmup, "shape": args.shape,
                           "results": results}
                args.out.write_text(json.dumps(payload, indent=1))

    print(f"\n{'config':16} {'impl':10} {'tokens/s':>9} {'peak GiB':>9}")
    for row in results:
        if "error" in row:
            print(f"{row['config']:16} {row['impl']:10} error: {row['error'][:60]}")
        else:
            print(f"{row['config']:16} {row['impl']:10} {row['tokens_per_s']:9.0f} "
                  f"{row['peak_bytes'] / 2**30:9.1f}")


if __name__ == "__main__":
    main()
