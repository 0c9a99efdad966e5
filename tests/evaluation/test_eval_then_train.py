"""Evaluating the model in memory must not change how it trains afterwards."""

from __future__ import annotations

from pathlib import Path

import torch


def test_training_after_a_baseline_evaluation_is_unchanged(tiny_config, tmp_path: Path) -> None:
    """An eval-mode pass must not leave the 4-bit layers in an inference-only state.

    bitsandbytes repacks 4-bit weights for a fused inference kernel on the first eval-mode
    forward on CPUs with AVX512-BF16, and that kernel has no backward: training afterwards
    would get no gradient through the frozen layers. The trainer turns the repacking off.
    """
    from qsweep.evaluation.config import EvalConfig
    from qsweep.evaluation.harness import evaluate_model
    from qsweep.trainers.loop import fit, prepare

    cfg = tiny_config(train={"max_steps": 4})
    plain = fit(prepare(cfg), cfg, tmp_path / "plain")
    setup = prepare(cfg)
    with setup.qlora.model.disable_adapter():
        evaluate_model(setup.qlora.model, setup.qlora.tokenizer,
                       EvalConfig(tasks=["perplexity_offline"], limit=2), compute_dtype=torch.float32)
    after_eval = fit(setup, cfg, tmp_path / "after-eval")
    assert [m.loss for m in after_eval.history] == [m.loss for m in plain.history]


def test_evaluation_runs_frozen_weights_in_the_load_dtype_and_restores_them(tiny_config) -> None:
    """Training upcasts the frozen unquantized weights to float32; evaluation casts them back to
    the dtype they were loaded in (bf16 here) and restores them exactly afterwards."""
    from qsweep.evaluation.config import EvalConfig
    from qsweep.evaluation.harness import evaluate_model
    from qsweep.trainers.loop import prepare

    cfg = tiny_config(model={"dtype": "bf16"}, quant={"compute_dtype": "bf16"})
    model = prepare(cfg).qlora.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    upcast = [n for n, p in model.named_parameters() if not p.requires_grad and p.dtype == torch.float32]
    assert any("embed_tokens" in n for n in upcast) and any("norm" in n for n in upcast)
    seen: list[torch.dtype] = []
    norm = next(m for n, m in model.named_modules() if n.endswith("model.norm"))
    handle = norm.register_forward_hook(lambda module, args, out: seen.append(module.weight.dtype))
    evaluate_model(model, prepare(cfg).qlora.tokenizer, EvalConfig(tasks=["perplexity_offline"], limit=1),
                   compute_dtype=torch.bfloat16, weight_dtype=torch.bfloat16)
    handle.remove()
    assert seen and set(seen) == {torch.bfloat16}
    after = dict(model.named_parameters())
    assert all(after[n].dtype == t.dtype and torch.equal(after[n], t) for n, t in before.items())


def test_evaluating_a_compiled_model_compiles_nothing_and_training_still_does(tiny_config,
                                                                              tmp_path: Path) -> None:
    """Layers compiled for training (train.compile) are evaluated eagerly: no new graphs for
    evaluation's shapes; training afterwards runs the compiled layers as before."""
    from qsweep.evaluation.config import EvalConfig
    from qsweep.evaluation.harness import evaluate_model
    from qsweep.trainers.loop import fit, prepare
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_config(train={"max_steps": 2, "compile": True})
    setup = prepare(cfg)
    evaluation = EvalConfig(tasks=["perplexity_offline"], limit=2)
    evaluate_model(setup.qlora.model, setup.qlora.tokenizer, evaluation, compute_dtype=torch.float32)
    assert counters["stats"]["unique_graphs"] == 0
    fit(setup, cfg, tmp_path / "train")
    assert counters["stats"]["unique_graphs"] > 0
