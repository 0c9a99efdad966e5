"""Trial config: paper defaults, overrides, and every invalid input named by its key path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from qsweep.trainers.config_loading import load_config, validate
from qsweep.trainers.errors import ConfigError


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "trial.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def problems_of(tmp_path: Path, data: dict | str, overrides: list[str] | None = None) -> dict:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data), overrides)
    return dict(caught.value.problems)


@pytest.fixture
def valid(tiny_model_dir: Path, repeated_data: Path) -> dict:
    return {"model": {"name": str(tiny_model_dir)}, "data": {"path": str(repeated_data)}}


def test_defaults_follow_the_qlora_paper(valid: dict) -> None:
    cfg = validate(valid)
    assert (cfg.quant.bits, cfg.quant.type, cfg.quant.double_quant) == (4, "nf4", True)
    assert cfg.quant.compute_dtype == "bf16"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (64, 16, "all-linear")
    assert cfg.train.optimizer == "paged_adamw_32bit"
    assert (cfg.train.lr_schedule, cfg.train.learning_rate) == ("constant", 2e-4)
    assert cfg.train.max_grad_norm == 0.3
    assert cfg.train.response_only_loss is True
    assert cfg.train.batch_size == 16
    assert cfg.model.trust_remote_code is False
    assert cfg.quant.label == "NF4+DQ"


def test_overrides_are_typed_and_applied(tmp_path: Path, valid: dict) -> None:
    cfg = load_config(write(tmp_path, valid), ["lora.r=16", "quant.type=fp4",
                                                     "quant.double_quant=false",
                                                     "lora.target_modules=[q_proj,v_proj]"])
    assert cfg.lora.r == 16
    assert cfg.quant.label == "FP4"
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]


def test_r_must_be_positive(tmp_path: Path, valid: dict) -> None:
    valid["lora"] = {"r": 0}
    assert problems_of(tmp_path, valid) == {"lora.r": "must be > 0, got 0"}


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path, valid: dict) -> None:
    valid["lora"] = {"rank": 8}
    valid["trian"] = {}
    problems = problems_of(tmp_path, valid)
    assert problems["lora.rank"].startswith("unknown key")
    assert "r, alpha, dropout, target_modules" in problems["lora.rank"]
    assert "did you mean 'train'" in problems["trian"]


def test_wrong_types(tmp_path: Path, valid: dict) -> None:
    valid["train"] = {"max_steps": "many", "gradient_checkpointing": "perhaps"}
    valid["lora"] = {"alpha": [1]}
    problems = problems_of(tmp_path, valid)
    assert problems["train.max_steps"] == "must be an integer, got 'many'"
    assert problems["train.gradient_checkpointing"] == "must be true or false, got 'perhaps'"
    assert problems["lora.alpha"].startswith("must be a number")


def test_fp4_with_16_bits_is_a_contradiction(tmp_path: Path, valid: dict) -> None:
    valid["quant"] = {"bits": 16, "type": "fp4"}
    assert problems_of(tmp_path, valid) == {
        "quant.type": "'fp4' is a 4-bit data type, but quant.bits is 16"}


def test_bits_16_override_turns_a_4bit_config_into_the_baseline(tmp_path: Path, valid: dict) -> None:
    valid["quant"] = {"type": "nf4", "double_quant": True}
    cfg = load_config(write(tmp_path, valid), ["quant.bits=16"])
    assert cfg.quant.label == "16-bit"


def test_missing_local_files(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, {"model": {"name": "./no-such-model"},
                                      "data": {"path": "no-such-file.jsonl"}})
    assert problems == {
        "model.name": "local model directory './no-such-model' does not exist",
        "data.path": "file 'no-such-file.jsonl' does not exist",
    }


def test_unknown_presets_and_names(tmp_path: Path, valid: dict) -> None:
    valid["lora"] = {"target_modules": "attn"}
    valid["data"] = {"name": "alpacca", "template": "fancy"}
    problems = problems_of(tmp_path, valid)
    assert problems["lora.target_modules"].startswith("unknown preset 'attn'")
    assert "attention, mlp, all-linear" in problems["lora.target_modules"]
    assert problems["data.name"].startswith("unknown recipe 'alpacca'")
    assert problems["data.template"].startswith("unknown template 'fancy'")


def test_a_hub_recipe_refuses_a_local_file_and_flan_v2_takes_either(tmp_path: Path, valid: dict) -> None:
    local = tmp_path / "rows.jsonl"
    local.write_text('{"inputs": "q", "targets": "a"}\n')
    valid["data"] = {"name": "alpaca", "path": str(local)}
    assert problems_of(tmp_path, valid)["data.path"] == "recipe 'alpaca' does not read a local file"
    valid["data"] = {"name": "flan_v2"}  # the hub's FLAN collection
    assert load_config(write(tmp_path, valid)).data.path is None
    valid["data"] = {"name": "flan_v2", "path": str(local)}
    assert load_config(write(tmp_path, valid)).data.path == local


def test_all_problems_are_reported_at_once(tmp_path: Path, valid: dict) -> None:
    valid["lora"] = {"r": -1, "dropout": 1.5}
    valid["quant"] = {"bits": 3}
    valid["train"] = {"optimizer": "sgd", "device": "tpu"}
    problems = problems_of(tmp_path, valid, ["data.limit=0"])
    assert set(problems) == {"lora.r", "lora.dropout", "quant.bits", "train.optimizer",
                             "train.device", "data.limit"}
    assert problems["data.limit"] == "must be > 0, got 0 (from the command line)"


def test_malformed_yaml_and_overrides(tmp_path: Path, valid: dict) -> None:
    problems = problems_of(tmp_path, "model:\n  name: a\nmodel:\n  name: b\n")
    assert "appears twice" in problems[""]
    with pytest.raises(ConfigError, match="not of the form section.key=value"):
        load_config(write(tmp_path, valid), ["lora.r16"])
    with pytest.raises(ConfigError, match="is 5, not a section"):
        load_config(write(tmp_path, valid), ["lora=5", "lora.r=3"])


def test_content_hash_ignores_settings_that_cannot_matter(valid: dict) -> None:
    base = validate({**valid, "quant": {"bits": 16}})
    same = validate({**valid, "quant": {"bits": 16, "double_quant": False},
                     "train": {"checkpoint_every": 7}})
    assert base.content_hash() == same.content_hash()
    assert validate(valid).content_hash() != validate({**valid, "lora": {"r": 8}}).content_hash()
    assert len(base.content_hash()) == 64


def test_flat_params_use_dotted_keys(valid: dict) -> None:
    flat = validate(valid).flat()
    assert flat["lora.r"] == 64 and flat["quant.type"] == "nf4"
    assert flat["train.learning_rate"] == 2e-4
    assert all(key.count(".") == 1 for key in flat)


def test_cli_reports_every_problem_and_exits_2_before_loading(tmp_path: Path) -> None:
    config = write(tmp_path, {"model": {"name": "smollm2-135m-instruct"},
                              "lora": {"r": 0, "target_modules": "attn"},
                              "quant": {"bits": 16, "type": "fp4"},
                              "data": {"path": "missing.jsonl"}})
    cache = tmp_path / "empty-cache"
    done = subprocess.run([sys.executable, "-m", "qsweep.orchestrator.cli", "train", str(config),
                           "train.max_steps=-3", f"--workdir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=tmp_path, check=False,
                          env={**os.environ, "QSWEEP_CACHE_DIR": str(cache)})
    assert done.returncode == 2, done.stderr
    for line in ("lora.r: must be > 0, got 0", "lora.target_modules: unknown preset 'attn'",
                 "quant.type: 'fp4' is a 4-bit data type", "data.path: file 'missing.jsonl'",
                 "train.max_steps: must be > 0, got -3 (from the command line)"):
        assert line in " ".join(done.stderr.split()), done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
    assert not cache.exists()  # the model asset was not even fetched
