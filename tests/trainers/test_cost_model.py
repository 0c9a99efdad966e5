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
        "model": {"name": "meta-llama/Meta-Llama-3-8B"}, "quant": quant, "data": {"name": "alpaca"},
        "lora": {"r": 64, "target_modules": "all-linear"},
        "train": {"micro_batch_size": micro_batch, "gradient_checkpointing": checkpointing,
                  "max_source_length": 896, "max_target_length": 128}})
    cost = training_cost(cfg, KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"])
    assert cost.tokens_per_s == pytest.approx(tokens_per_s, rel=0.15)
    assert cost.peak_bytes / GIB == pytest.approx(peak_gib, rel=0.15)


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
