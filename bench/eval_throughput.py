"""MMLU evaluation throughput: qsweep's in-memory path against lm-eval's own model loading.

* ``qsweep``: ``qsweep.trainers.model.load_qlora_model`` (NF4 + double quantization, LoRA r=64 on all
  linear layers) evaluated in memory by ``qsweep.evaluation.harness.evaluate_model`` — what
  ``qsweep trial`` does after training;
* ``reference``: ``lm_eval.simple_evaluate`` on lm-eval's ``HFLM`` around a plain transformers
  model loaded in the same 4-bit format (no adapter, no qsweep code).

Diagnostics: ``reference-lora`` is the reference with an untrained LoRA r=64 on every linear
layer (the cost of evaluating an unmerged adapter); ``qsweep-fp32`` evaluates with the frozen
weights left in the float32 that training upcast them to (qsweep before it cast them back).

Both score the same ``mmlu_offline`` questions (5-shot, the same stratified sample), each in a
fresh process; the script reports questions, seconds, questions/s and accuracy. With
``--batch-size auto`` (the default) each path sizes its batches its own way: qsweep's
``qsweep.evaluation.batching`` (measured at the longest request), lm-eval's probing for the reference.

CPU, the offline SmolLM2 (stratified 2 questions per subject; ``--limit 0`` is the full set)::

    python bench/eval_throughput.py --model smollm2-135m-instruct --device cpu --limit 2

GPU, Llama-3-8B shape with random weights and SmolLM2's tokenizer (realistic prompt lengths)::

    python bench/eval_throughput.py --model /tmp/llama3-8b --create llama3-8b --device cuda --limit 20 \\
        --tokenizer-from DIR_WITH_SMOLLM2_TOKENIZER_FILES
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import environment, report, run_worker  # noqa: E402


def run_qsweep(args: argparse.Namespace) -> dict:
    import torch
    from qsweep.evaluation.harness import evaluate_model
    from qsweep.orchestrator.trial.config import TrialConfig
    from qsweep.trainers.config_loading import validate
    from qsweep.trainers.model import DTYPES, load_qlora_model

    cfg = validate({
        "model": {"name": args.model, "dtype": args.dtype},
        "quant": {"type": "nf4", "double_quant": True, "compute_dtype": args.dtype},
        "lora": {"r": 64, "alpha": 16, "dropout": 0.0},
        "data": {"name": "mmlu-heldout"},
        "eval": {"tasks": ["mmlu_offline"], "num_fewshot": 5, "limit": args.limit or None,
                 "batch_size": _batch(args)},
    }, TrialConfig)
    started = time.perf_counter()
    qlora = load_qlora_model(cfg, torch.device(args.device))
    loaded = time.perf_counter() - started
    weight_dtype = DTYPES[cfg.model.dtype] if args.worker != "qsweep-fp32" else None
    outcome = evaluate_model(qlora.model, qlora.tokenizer, cfg.eval,
                             compute_dtype=DTYPES[cfg.quant.compute_dtype], weight_dtype=weight_dtype)
    return {"questions": outcome.documents, "seconds": outcome.seconds, "load_s": loaded,
            "accuracy": outcome.metrics["eval/mmlu_offline/acc"], "batch_size": str(outcome.batch_size)}


def run_reference(args: argparse.Namespace) -> dict:
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from qsweep.evaluation.harness import stratified_samples, task_manager
    from qsweep.evaluation.results import summarize
    from qsweep.trainers import assets
    from qsweep.trainers.model import DTYPES
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    path = str(assets.ensure(args.model)) if not args.model.startswith("/") else args.model
    manager = task_manager()
    samples = None
    if args.limit:
        leaves = manager.load(["mmlu_offline"])["tasks"]
        samples = stratified_samples({n: len(t.eval_docs) for n, t in leaves.items()}, args.limit, 1234)
    compute = DTYPES[args.dtype]
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                      bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)
    started = time.perf_counter()
    # lm-eval 0.4.13 cannot pass a BitsAndBytesConfig to transformers 5 itself
    # ("load_in_4bit" is gone): load the plain 4-bit model as its docs show, then wrap it.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=compute, quantization_config=quantization,
                                                 device_map={"": args.device})
    if args.worker == "reference-lora":
        # Diagnostic: the same plain model with an (untrained) LoRA r=64 on every linear layer.
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=16, target_modules="all-linear",
                                                 task_type="CAUSAL_LM")).eval()
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(path), batch_size=_batch(args),
              mixed_precision_dtype=compute if compute != torch.float32 else None)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=["mmlu_offline"], num_fewshot=5, samples=samples,
                              task_manager=manager, log_samples=False, bootstrap_iters=1000,
                              fewshot_random_seed=1234)
    seconds = time.perf_counter() - started
    metrics = summarize(results)
    return {"questions": int(metrics["eval/mmlu_offline/n"]), "seconds": seconds, "load_s": loaded,
            "accuracy": metrics["eval/mmlu_offline/acc"],
            "batch_size": str(dict(lm.batch_sizes) or lm.batch_size)}


def _batch(args: argparse.Namespace) -> int | str:
    return "auto" if args.batch_size == "auto" else int(args.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="asset name or model directory")
    parser.add_argument("--create", default=None, help="create a random model of this shape at --model")
    parser.add_argument("--tokenizer-from", type=Path, default=None,
                        help="tokenizer of the created model (default: the offline SmolLM2's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["bf16", "fp32"],
                        help="compute dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--limit", type=int, default=2, help="questions per subject; 0: all 13,757")
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--impls", default="qsweep,reference")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.worker:
        report((run_qsweep if args.worker.startswith("qsweep") else run_reference)(args))
        return

    if args.create and not (Path(args.model) / "config.json").exists():
        import torch
        from qsweep.trainers import assets
        from qsweep.trainers.random_model import write_random_llama

        tokenizer_dir = args.tokenizer_from or assets.ensure("smollm2-135m-instruct")
        write_random_llama(Path(args.model), args.create, dtype=torch.bfloat16, device=args.device,
                           vocab_size=128_256, tokenizer_from=tokenizer_dir)
    rows = []
    for impl in args.impls.split(","):
        row = {"impl": impl, **run_worker([__file__, f"--worker={impl}", f"--model={args.model}",
                                           f"--device={args.device}", f"--dtype={args.dtype}",
                                           f"--limit={args.limit}", f"--batch-size={args.batch_size}"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            args.out.write_text(json.dumps({"model": args.model, "device": args.device, "dtype": args.dtype,
                                            "limit": args.limit, "batch_size": args.batch_size,
                                            "environment": environment(), "results": rows}, indent=1))
    for row in rows:
        if "error" in row:
            print(f"{row['impl']:10} error: {row['error'][:80]}")
        else:
            print(f"{row['impl']:10} {row['questions']} questions in {row['seconds']:.0f} s "
                  f"({row['questions'] / row['seconds']:.2f} q/s; loading {row['load_s']:.0f} s) "
                  f"acc {row['accuracy']:.4f}")

if __name__ == "__main__":
    main()
