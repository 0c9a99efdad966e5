"""The memory/time model against measurements: a real quantized model here, the H100 figures there."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from qsweep.trainers.config import TrainingConfig
from qsweep.trainers.cost_model import GIB, KNOWN_SHAPES, shape_of, training_cost, weight_bytes
from qsweep.trainers.model import load_qlora_model

# The plain transformers + bitsandbytes + peft loop measured on one H100 80GB, Llama-3-8B shape,
# seq 1024, LoRA r=64 on all linear layers (bench/README.md, "Training throughput and memory on
# a GPU"; bench/results/train_throughput_h100_part{1,2}.json).
H100_REFERENCE = [
    # (quant, micro-batch, gradient checkpointing, measured tokens/s, measured peak GiB)
    ({"type": "nf4", "double_quant": True}, 1, True, 1621, 11.08),
    ({"type": "nf4", "double_quant": True}, 4, True, 4811, 16.91),
    ({"type": "nf4", "double_quant": True}, 4, False, 7281, 58.23),
    ({"type": "fp4", "double_quant": False}, 4, False, 7345, 58.56),
    ({"bits": 16}, 4, False, 9118, 54.45),
]


@pytest.mark.parametrize(("quant", "micro_batch", "checkpointing", "tokens_per_s", "peak_gib"),
                         H100_REFERENCE)
def test_the_model_reproduces_the_h100_reference_within_15_percent(quant, micro_batch, checkpointing,
                                                                   tokens_per_s, peak_gib) -> None:
    cfg = TrainingConfig.model_validate({
        "model": {"name": "meta-llama/Meta-Llama-3-8B"}, "quant": quant, "data": {"name": "oasst1"},
        "lora": {"r": 64, "target_modules": "all-linear"},
        "train": {"micro_batch_size": micro_batch, "gradient_checkpointing": checkpointing,
                  "max_source_length": 896, "max_target_length": 128}})
    cost = training_cost(cfg, KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"])
    assert cost.tokens_per_s == pytest.approx(tokens_per_s, rel=0.15)
    assert cost.peak_bytes / GIB == pytest.approx(peak_gib, rel=0.15)


# qsweep's trainer on the offline mmlu-heldout examples (78 real tokens each on average), the same
# shape and LoRA, NF4+DQ with checkpointing (bench/README.md, "Layouts, kernels and compilation
# on short examples": medians over the calls).
H100_SHORT_EXAMPLES = [
    # (train options, measured real tokens/s)
    ({"micro_batch_size": 1, "grad_accum_steps": 16}, 127),
    ({"micro_batch_size": 32, "grad_accum_steps": 1, "packing": True}, 3452),
    ({"micro_batch_size": 32, "grad_accum_steps": 1, "packing": True, "compile": True}, 5111),
    ({"micro_batch_size": 16, "grad_accum_steps": 1, "packing": True}, 1513),
]


@pytest.mark.parametrize(("train", "tokens_per_s"), H100_SHORT_EXAMPLES)
def test_the_model_follows_real_tokens_on_short_examples_within_25_percent(train, tokens_per_s) -> None:
    cfg = TrainingConfig.model_validate({
        "model": {"name": "meta-llama/Meta-Llama-3-8B"}, "data": {"name": "mmlu-heldout"},
        "quant": {"type": "nf4", "double_quant": True}, "lora": {"r": 64, "target_modules": "all-linear"},
        "train": {"max_steps": 100, **train}})
    cost = training_cost(cfg, KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"])
    assert cost.tokens_per_s == pytest.approx(tokens_per_s, rel=0.25)
    assert cost.tokens == pytest.approx(100 * 16 * 78.4 * (2 if train["micro_batch_size"] == 32 else 1))


def test_fewer_checkpointed_layers_cost_memory_and_save_time() -> None:
    def cost(**train):
        return training_cost(TrainingConfig.model_validate({
            "model": {"name": "meta-llama/Meta-Llama-3-8B"}, "data": {"name": "oasst1"},
            "train": {"micro_batch_size": 4, **train}}), KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"])

    full, relaxed, none = cost(), cost(uncheckpointed_layers=8), cost(gradient_checkpointing=False)
    assert full.peak_bytes < relaxed.peak_bytes < none.peak_bytes
    assert full.seconds > relaxed.seconds > none.seconds
    assert cost(uncheckpointed_layers=99).peak_bytes == none.peak_bytes
    assert cost(kernels="auto").peak_bytes < full.peak_bytes  # no logits with the fused loss


@pytest.mark.parametrize("quant", [{"type": "nf4", "double_quant": False},
                                   {"type": "fp4", "double_quant": True}, {"bits": 16}])
def test_weights_and_adapter_size_match_a_real_quantized_model(tiny_config, tiny_model_dir: Path,
                                                               quant) -> None:
    """Predicted from config.json alone vs measured on the loaded bitsandbytes + peft model."""
    cfg = tiny_config(quant=quant, lora={"r": 8, "target_modules": "attention"})
    loaded = load_qlora_model(cfg, torch.device("cpu"))
    shape = shape_of(str(tiny_model_dir))
    assert shape is not None
    assert training_cost(cfg, shape).adapter_params == loaded.trainable_params
    if cfg.quant.bits == 4:
        assert shape.linear_params == loaded.footprint.quantized_params
        predicted = weight_bytes(shape, 4, cfg.quant.double_quant) - shape.embedding_params * 2
        assert predicted == pytest.approx(loaded.footprint.quantized_bytes, rel=0.01)


def test_unknown_models_have_no_shape(tmp_path: Path) -> None:
    assert shape_of("someone/unknown-model") is None
    assert shape_of(str(tmp_path)) is None
