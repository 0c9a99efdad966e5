"""The real offline model: the converted SmolLM2 answers sensibly and trains in NF4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from qsweep.trainers import assets
from qsweep.trainers.config_loading import validate
from qsweep.trainers.loop import fit, prepare

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return assets.ensure(MODEL)


def test_converted_model_knows_the_capital_of_france(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, use_safetensors=True)
    assert not hasattr(model.config, "quantization_config")  # the GGUF quantizer is gone
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt")
    output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_nf4_steps_train_and_the_adapter_reloads(smollm2_dir: Path, tmp_path: Path) -> None:
    import peft
    from qsweep.trainers.model import bnb_config, keep_4bit_layers_trainable
    from transformers import AutoModelForCausalLM

    cfg = validate({
        "model": {"name": MODEL, "dtype": "fp32"},
        "quant": {"type": "nf4", "double_quant": True, "compute_dtype": "fp32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 3, "micro_batch_size": 2, "grad_accum_steps": 1,
                  "learning_rate": 1e-3, "max_source_length": 160, "max_target_length": 4,
                  "gradient_checkpointing": False, "device": "cpu", "checkpoint_every": 0},
        "data": {"name": "mmlu-heldout", "limit": 12},
    })
    setup = prepare(cfg)
    result = fit(setup, cfg, tmp_path)
    assert result.status == "finished" and result.steps == 3
    assert all(torch.isfinite(torch.tensor(m.loss)) for m in result.history)
    assert 4.1 < result.footprint.bits_per_quantized_param < 4.2

    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, quantization_config=bnb_config(cfg.quant),
                                                dtype=torch.float32, use_safetensors=True)
    keep_4bit_layers_trainable(base)  # same kernels as the trained model (no bf16 CPU packing)
    reloaded = peft.PeftModel.from_pretrained(base, result.adapter_dir)
    trained = setup.qlora.model
    trained.eval()
    ids = torch.tensor([setup.examples[0].input_ids])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected)
    with reloaded.disable_adapter(), torch.no_grad():
        without = reloaded(input_ids=ids).logits
    assert not torch.allclose(without, expected)  # the adapter does change the model
