"""The real SmolLM2 asset, in NF4 with a LoRA adapter, evaluated through lm-eval in memory.

lm-eval's MMLU accuracy must equal an independent computation — the argmax over the model's
logits for " A" / " B" / " C" / " D" after the same prompt, built here from the raw questions —
question by question; its word perplexity must equal one computed from token log-likelihoods.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from qsweep.evaluation import offline_data
from qsweep.evaluation.config import EvalConfig
from qsweep.evaluation.harness import evaluate_model
from qsweep.evaluation.results import subject_task
from qsweep.trainers.config_loading import validate
from qsweep.trainers.mmlu import LETTERS, format_question, subject_header
from qsweep.trainers.model import load_qlora_model


@pytest.fixture(scope="module")
def qlora():
    cfg = validate({"model": {"name": "smollm2-135m-instruct", "dtype": "fp32"},
                    "quant": {"type": "nf4", "compute_dtype": "fp32"},
                    "lora": {"r": 8, "dropout": 0.0}, "data": {"name": "mmlu-heldout"}})
    loaded = load_qlora_model(cfg, torch.device("cpu"))
    loaded.model.eval()
    return loaded


def independent_prompt(subject: str, doc: dict) -> str:
    """lm-eval's mmlu prompt, written out: header, one solved dev question, the question."""
    (example, *_), _ = offline_data.mmlu_split(subject)
    shot = format_question(example) + " " + LETTERS[example.answer] + "\n\n"
    question = doc["question"].strip() + "".join(
        f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, doc["choices"], strict=True))
    return subject_header(subject.replace("_", " ")) + shot + question + "\nAnswer:"


# Three subjects of each category, one question each: every forward pass of a 4-bit model costs
# seconds on a 2-core CPU, and each question is scored twice (by lm-eval and below).
SUBJECTS = ("astronomy", "college_physics", "machine_learning", "formal_logic", "philosophy",
            "world_religions", "econometrics", "sociology", "us_foreign_policy", "marketing", "nutrition",
            "virology")


def test_mmlu_accuracy_equals_an_independent_argmax(qlora) -> None:
    tokenizer, model = qlora.tokenizer, qlora.model
    cfg = EvalConfig(tasks=[f"mmlu_offline_{s}" for s in SUBJECTS], num_fewshot=1, limit=1, seed=7,
                     save_samples=True, batch_size=4)
    outcome = evaluate_model(model, tokenizer, cfg, compute_dtype=torch.float32)
    choice_ids = [tokenizer(" " + letter, add_special_tokens=False)["input_ids"] for letter in LETTERS]
    assert all(len(ids) == 1 for ids in choice_ids)  # single-token answers: argmax is exact
    choice_ids = [ids[0] for ids in choice_ids]

    correct, seen = 0, 0
    for task, records in outcome.samples.items():
        family, subject = subject_task(task)
        for record in records:
            context = record["arguments"][0][0]
            assert context == independent_prompt(subject, record["doc"])
            ids = torch.tensor([tokenizer(context)["input_ids"]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, -1]
            ours = int(torch.argmax(logits[choice_ids]))
            theirs = max(range(4), key=lambda i: record["filtered_resps"][i][0])
            assert ours == theirs, (task, record["doc_id"])
            correct += ours == record["target"]
            seen += 1
    assert seen == len(SUBJECTS)
    assert {f"eval/mmlu_offline/{c}/acc" for c in ("stem", "humanities", "social_sciences", "other")} \
        <= set(outcome.metrics)
    assert outcome.metrics["eval/mmlu_offline/acc"] == correct / seen
    assert outcome.metrics["eval/mmlu_offline/n"] == seen
    # the per-question records that item-level statistics use say the same
    items = outcome.items.for_metric("eval/mmlu_offline/acc")
    assert items.kind == "accuracy" and len(items.ids) == seen and sum(items.values) == correct
    by_task = dict(zip(outcome.items.questions["task"], outcome.items.questions["chosen"], strict=True))
    for task, records in outcome.samples.items():
        assert by_task[task] == max(range(4), key=lambda i: records[0]["filtered_resps"][i][0])


def test_word_perplexity_equals_token_loglikelihoods(qlora) -> None:
    tokenizer, model = qlora.tokenizer, qlora.model
    # One document per forward pass: in padded batches the 4-bit kernels' rounding moves
    # log-likelihoods by up to ~1e-3 relative, which an exact comparison would trip over.
    cfg = EvalConfig(tasks=["perplexity_offline"], limit=6, save_samples=True, batch_size=1)
    outcome = evaluate_model(model, tokenizer, cfg, compute_dtype=torch.float32)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total_loglik, total_words = 0.0, 0
    for record in outcome.samples["perplexity_offline"]:
        text = record["doc"]["text"]
        tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[prefix, *tokens]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        total_loglik += float(logprobs[torch.arange(len(tokens)), torch.tensor(tokens)].sum())
        total_words += len(re.split(r"\s+", text))
    assert outcome.documents == 6
    assert outcome.metrics["eval/perplexity_offline/word_perplexity"] == pytest.approx(
        math.exp(-total_loglik / total_words), rel=1e-3)
    assert outcome.metrics["eval/perplexity"] == outcome.metrics["eval/perplexity_offline/word_perplexity"]
    items = outcome.items.for_metric("eval/perplexity_offline/word_perplexity")
    assert items.kind == "perplexity" and len(items.ids) == 6 and sum(items.weights) == total_words
    assert math.exp(-sum(items.values) / sum(items.weights)) == pytest.approx(
        outcome.metrics["eval/perplexity_offline/word_perplexity"], rel=1e-9)


def test_evaluation_leaves_the_random_state_alone(qlora) -> None:
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    evaluate_model(qlora.model, qlora.tokenizer, EvalConfig(tasks=["perplexity_offline"], limit=1),
                   compute_dtype=torch.float32)
    assert torch.equal(torch.rand(3), expected)
