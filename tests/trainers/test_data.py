"""Datasets, templates, tokenization with response-only labels, and the seeded data order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from qsweep.trainers.config_loading import validate
from qsweep.trainers.data_recipes import DataError, load_records, render_prompt
from qsweep.trainers.examples import IGNORE_INDEX, BatchOrder, collate, tokenize
from qsweep.trainers.hub import HubUnavailable
from qsweep.trainers.model import load_tokenizer


@pytest.fixture
def tokenizer(tiny_model_dir: Path):
    return load_tokenizer(str(tiny_model_dir), validate(
        {"model": {"name": str(tiny_model_dir)}, "data": {"name": "alpaca"}}).model)


def data_config(tiny_model_dir: Path, **data):
    return validate({"model": {"name": str(tiny_model_dir)}, "data": data})


def test_response_only_labels_mask_the_prompt(tiny_model_dir: Path, repeated_data: Path, tokenizer) -> None:
    cfg = data_config(tiny_model_dir, path=str(repeated_data))
    record = load_records(cfg.data)[3]
    example = tokenize([record], tokenizer, cfg)[0]
    prompt_ids = tokenizer(record["prompt"])["input_ids"]
    response_ids = tokenizer(record["response"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert list(example.input_ids) == prompt_ids + response_ids
    assert list(example.labels) == [IGNORE_INDEX] * len(prompt_ids) + response_ids

    full = validate({**cfg.to_dict(), "train": {"response_only_loss": False}})
    assert tokenize([record], tokenizer, full)[0].labels == example.input_ids


def test_lengths_are_truncated(tiny_model_dir: Path, repeated_data: Path, tokenizer) -> None:
    cfg = validate({"model": {"name": str(tiny_model_dir)}, "data": {"path": str(repeated_data)},
                    "train": {"max_source_length": 5, "max_target_length": 3}})
    for example in tokenize(load_records(cfg.data), tokenizer, cfg):
        assert len(example.input_ids) == 8
        assert example.labels[:5] == (IGNORE_INDEX,) * 5


def test_local_csv_json_and_format_string_templates(tiny_model_dir: Path, tmp_path: Path) -> None:
    csv_file = tmp_path / "qa.csv"
    csv_file.write_text("question,answer\nWhy?,Because.\nHow?,Carefully.\n")
    cfg = data_config(tiny_model_dir, path=str(csv_file), template="Question: {question}\nAnswer:",
                      response_field="answer")
    records = load_records(cfg.data)
    assert [r["response"] for r in records] == ["Because.", "Carefully."]
    assert render_prompt(records[0], cfg.data.template, str) == "Question: Why?\nAnswer:"

    json_file = tmp_path / "pairs.json"
    json_file.write_text(json.dumps([{"prompt": "p", "response": "r"}] * 5))
    assert len(load_records(data_config(tiny_model_dir, path=str(json_file), limit=2).data)) == 2


def test_missing_fields_are_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "p", "output": "r"}) + "\n")
    with pytest.raises(DataError, match=r"data.response_field: row 1 .* no field 'response'"):
        load_records(data_config(tiny_model_dir, path=str(path)).data)
    templated = data_config(tiny_model_dir, path=str(path), template="{instruction}",
                            response_field="output")
    with pytest.raises(DataError, match=r"data.template: field 'instruction' is not in the records"):
        render_prompt(load_records(templated.data)[0], "{instruction}", str)


def test_flan_v2_reads_inputs_and_targets_from_a_local_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "flan.jsonl"
    path.write_text(json.dumps({"inputs": "Translate: chat", "targets": "cat", "task": "t1"}) + "\n")
    records = load_records(data_config(tiny_model_dir, name="flan_v2", path=str(path)).data)
    assert (records[0]["prompt"], records[0]["response"]) == ("Translate: chat", "cat")
    path.write_text(json.dumps({"question": "q"}) + "\n")
    with pytest.raises(DataError, match="need 'inputs' and 'targets'"):
        load_records(data_config(tiny_model_dir, name="flan_v2", path=str(path)).data)


def test_alpaca_template_with_and_without_input() -> None:
    with_input = render_prompt({"prompt": "Sum", "instruction": "Sum", "input": "2, 3"}, "alpaca", str)
    assert "### Input:\n2, 3" in with_input and with_input.endswith("### Response: ")
    assert "### Input" not in render_prompt({"prompt": "Say hi"}, "alpaca", str)


def test_offline_mmlu_recipe_holds_only_the_training_subjects(tiny_model_dir: Path) -> None:
    from qsweep.trainers.mmlu import TRAIN_SUBJECTS

    records = load_records(data_config(tiny_model_dir, name="mmlu-heldout").data)
    assert len(records) == 2030
    assert {r["subject"] for r in records} == set(TRAIN_SUBJECTS)
    assert records[0]["prompt"].startswith("The following are multiple choice questions")
    assert records[0]["prompt"].endswith("\nAnswer:")
    assert {r["response"] for r in records} == {" A", " B", " C", " D"}


def test_batch_order_is_a_pure_function_of_seed_and_position() -> None:
    order = BatchOrder(num_examples=10, micro_batch_size=4, seed=7)
    epoch = [i for position in range(3) for i in order.micro_batch(position)]
    assert sorted(epoch) == list(range(10))  # one epoch: every example once
    fresh = BatchOrder(num_examples=10, micro_batch_size=4, seed=7)
    assert [fresh.micro_batch(p) for p in (5, 1, 4)] == [order.micro_batch(p) for p in (5, 1, 4)]
    assert BatchOrder(10, 4, seed=8).micro_batch(0) != order.micro_batch(0)
    assert order.epoch(6) == 2.0


def test_collate_pads_right_and_masks(tiny_model_dir: Path, repeated_data: Path, tokenizer) -> None:
    cfg = data_config(tiny_model_dir, path=str(repeated_data))
    examples = tokenize(load_records(cfg.data), tokenizer, cfg)[:2]
    examples[1] = type(examples[1])(examples[1].input_ids[:-3], examples[1].labels[:-3])
    batch = collate(examples, tokenizer.pad_token_id)
    n = len(examples[1].input_ids)
    assert batch["attention_mask"][1].tolist() == [1] * n + [0] * 3
    assert batch["labels"][1, n:].tolist() == [IGNORE_INDEX] * 3
    assert batch["input_ids"][1, n:].tolist() == [tokenizer.pad_token_id] * 3


def test_unreachable_hub_is_one_clear_line(tiny_model_dir: Path, closed_port: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(HubUnavailable, match="cannot reach the Hugging Face hub") as caught:
        load_records(data_config(tiny_model_dir, name="alpaca").data)
    assert "data.name=mmlu-heldout" in str(caught.value)


def test_cli_names_the_offline_alternative_without_a_traceback(
        tiny_model_dir: Path, tmp_path: Path, closed_port: int) -> None:
    config = tmp_path / "alpaca.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": str(tiny_model_dir)},
                                      "data": {"name": "alpaca"}, "train": {"device": "cpu"}}))
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port}", "COLUMNS": "400"}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-m", "qsweep.orchestrator.cli", "train", str(config),
                           f"--workdir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the Hugging Face hub" in errors[0]
    assert "mmlu-heldout" in errors[0]
    assert "Traceback" not in done.stderr
