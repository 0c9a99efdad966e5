"""QLoRA training on a tiny random Llama with real bitsandbytes 4-bit layers and real peft."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from qsweep.trainers.errors import SetupError
from qsweep.trainers.loop import fit, prepare, train
from qsweep.trainers.model import load_qlora_model

DATA_TYPES = {
    "nf4": {"bits": 4, "type": "nf4", "double_quant": False},
    "nf4+dq": {"bits": 4, "type": "nf4", "double_quant": True},
    "fp4": {"bits": 4, "type": "fp4", "double_quant": False},
    "fp4+dq": {"bits": 4, "type": "fp4", "double_quant": True},
    "int8": {"bits": 8},
    "16-bit": {"bits": 16},
}


def base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every non-LoRA tensor, including 4-bit data and its quantization constants."""
    state = {name: t.detach().clone() for name, t in model.named_parameters() if "lora_" not in name}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            quant = module.weight.quant_state
            state[f"{name}.absmax"] = quant.absmax.clone()
            if quant.nested:
                state[f"{name}.absmax2"] = quant.state2.absmax.clone()
    return state


@pytest.mark.parametrize("data_type", list(DATA_TYPES))
def test_loss_falls_and_only_lora_changes(data_type: str, tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(quant=DATA_TYPES[data_type])
    setup = prepare(cfg)
    model = setup.qlora.model
    if cfg.quant.bits == 4:
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(layers) == 14  # 2 layers x (q, k, v, o, gate, up, down)
        assert {m.weight.quant_type for m in layers} == {cfg.quant.type}
        assert {m.weight.quant_state.nested for m in layers} == {cfg.quant.double_quant}
    frozen_before = base_state(model)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in name for name in lora_before)

    steps = []
    result = fit(setup, cfg, tmp_path, steps.append)

    assert result.status == "finished" and result.steps == cfg.train.max_steps
    assert [m.step for m in steps] == list(range(1, cfg.train.max_steps + 1))
    first, last = steps[0].loss, steps[-1].loss
    assert last < 0.5 * first, (first, last)
    for name, before in frozen_before.items():
        after = base_state(model)[name]
        assert torch.equal(before, after), f"{name} changed"
    changed = [n for n, p in model.named_parameters()
               if p.requires_grad and not torch.equal(p.detach(), lora_before[n])]
    assert set(changed) == set(lora_before)
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_every_step_reports_its_metrics(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(train={"max_steps": 6, "lr_schedule": "linear", "warmup_ratio": 0.5})
    steps = []
    result = train(cfg, tmp_path, steps.append)
    lrs = [m.learning_rate for m in steps]
    assert lrs[0] < lrs[2]  # warming up over 3 steps
    assert lrs[3] > lrs[4] > lrs[5]  # then decaying linearly
    for metrics in steps:
        assert metrics.tokens > 0 and metrics.tokens_per_s > 0 and metrics.grad_norm > 0
        assert metrics.peak_memory_bytes > 0
    assert result.memory_kind == "cpu_peak_rss"
    assert result.tokens_per_s > 0 and result.final_loss == steps[-1].loss


def test_quantized_weight_bytes_are_ordered(tiny_config) -> None:
    footprints = {}
    for name, quant in DATA_TYPES.items():
        cfg = tiny_config(quant=quant)
        footprints[name] = load_qlora_model(cfg, torch.device("cpu")).footprint
    bits = {name: f.bits_per_quantized_param for name, f in footprints.items()}
    assert bits["nf4"] == bits["fp4"] == pytest.approx(4.5)  # 4 bits + fp32 absmax per 64
    assert bits["nf4+dq"] == bits["fp4+dq"]
    # 8-bit absmax per 64 weights plus one fp32 constant per 256 blocks of the tiny layers
    assert 4.12 < bits["nf4+dq"] < 4.14
    assert bits["nf4"] - bits["nf4+dq"] == pytest.approx(0.37, abs=0.01)
    assert 8 < bits["int8"] < 8.5  # int8 plus one fp32 scale per output row
    total = {name: f.total_bytes for name, f in footprints.items()}
    assert total["16-bit"] > total["int8"] > total["nf4"] == total["fp4"] > total["nf4+dq"] == total["fp4+dq"]
    assert footprints["16-bit"].quantized_params == 0


def test_a_nan_loss_ends_the_trial_with_a_status(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(train={"max_steps": 10, "learning_rate": 1e30, "max_grad_norm": 0})
    result = train(cfg, tmp_path)
    assert result.status == "nan"
    assert "became" in result.reason and f"step {result.steps + 1}" in result.reason
    assert result.steps < 10
    assert result.adapter_dir is None


@pytest.mark.parametrize(("preset", "expected"), [
    ("attention", {"q_proj", "k_proj", "v_proj", "o_proj"}),
    ("mlp", {"gate_proj", "up_proj", "down_proj"}),
    (["q_proj", "v_proj"], {"q_proj", "v_proj"}),
])
def test_target_module_presets(preset, expected: set[str], tiny_config) -> None:
    qlora = load_qlora_model(tiny_config(lora={"target_modules": preset}), torch.device("cpu"))
    adapted = {name.split(".")[-1] for name, module in qlora.model.named_modules()
               if hasattr(module, "lora_A")}
    assert adapted == expected


def test_unknown_target_module_is_reported_before_weights_load(tiny_config) -> None:
    with pytest.raises(SetupError, match=r"lora.target_modules: no linear layer named 'qkv'"):
        prepare(tiny_config(lora={"target_modules": ["qkv"]}))
