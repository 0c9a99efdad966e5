"""Evaluation batch sizes: chosen without probing at lengths no request has, reused across a
trial's evaluations, and without changing a single prediction.

Real lm-eval scoring on the tiny random Llama. On a CPU the sizer does not probe (a fixed
batch of 4); to run its measuring path here, :class:`LogitsGauge` stands in for the CUDA
allocator's counters: it reports the bytes of the logits and log-softmax that a pass produced
(the term that dominates an evaluation pass) against a fixed budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from qsweep.evaluation.batching import HEADROOM, BatchSizer
from qsweep.evaluation.config import EvalConfig
from qsweep.evaluation.harness import evaluate_model
from transformers import AutoModelForCausalLM, AutoTokenizer

TASKS = ["mmlu_offline", "perplexity_offline"]
LONG_CONTEXT = 131_072


class LogitsGauge:
    """Memory as the logits of the model's passes take, in float32 twice (logits, log-softmax)."""

    def __init__(self, model: torch.nn.Module, budget: int):
        self.budget = budget
        self._peak = 0
        model.register_forward_hook(self._seen)

    def _seen(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self._peak = max(self._peak, output.logits.numel() * 8)  # type: ignore[attr-defined]

    def available(self) -> int:
        return self.budget

    def peak_during(self, run: Callable[[], None]) -> int:
        self._peak = 0
        run()
        return self._peak


def input_shapes(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(batch, length) of every forward pass the model runs from now on."""
    shapes: list[tuple[int, int]] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(
        tuple((args[0] if args else kwargs["input_ids"]).shape)), with_kwargs=True)
    return shapes


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a config that advertises 131,072 positions (as Llama 3.1's does)."""
    from qsweep.trainers.random_model import write_random_llama

    path = write_random_llama(tmp_path_factory.mktemp("models") / "long-context", "tiny", seed=1)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = LONG_CONTEXT
    (path / "config.json").write_text(json.dumps(config))
    return path


def load(path: Path) -> tuple[torch.nn.Module, object]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path)


def evaluation(**values: object) -> EvalConfig:
    return EvalConfig(tasks=TASKS, limit=1, task_limits={"perplexity_offline": 8}, num_fewshot=1,
                      save_samples=True, **values)


def scores(samples: dict[str, list[dict]]) -> dict[tuple[str, str], list[float]]:
    """Every document's scores: the log-likelihood of each choice, or of the whole text."""
    out = {}
    for task, records in samples.items():
        for record in records:
            values = [r[0] if isinstance(r, (list, tuple)) else r for r in record["filtered_resps"]]
            out[(task, str(record["doc_id"]))] = [float(v) for v in values]
    return out


def test_a_chosen_batch_predicts_exactly_what_batch_size_one_does(long_context_model: Path) -> None:
    model, tokenizer = load(long_context_model)
    one = evaluate_model(model, tokenizer, evaluation(batch_size=1), compute_dtype=torch.float32)
    sizer = BatchSizer(gauge=LogitsGauge(model, budget=64 * 2**20))
    chosen = evaluate_model(model, tokenizer, evaluation(), compute_dtype=torch.float32, sizer=sizer)
    assert one.batch_size == {"loglikelihood": 1, "rolling": 1}
    assert chosen.batch_size["loglikelihood"] > 1 and chosen.batch_size["rolling"] > 1
    assert chosen.documents == one.documents > 50
    ones, batched = scores(one.samples), scores(chosen.samples)
    assert ones.keys() == batched.keys()
    for key, values in ones.items():
        assert batched[key] == pytest.approx(values, rel=1e-4, abs=1e-4), key
        assert max(range(len(values)), key=values.__getitem__) == \
            max(range(len(values)), key=batched[key].__getitem__), key  # the same answer
    for name, value in one.metrics.items():
        assert math.isclose(chosen.metrics[name], value, rel_tol=1e-4, abs_tol=1e-6), name


def test_a_long_context_model_is_measured_only_at_the_lengths_its_requests_have(
        long_context_model: Path) -> None:
    """Its config advertises 131,072 positions; lm-eval's own detection would probe 64 sequences
    of that length. The sizer measures at the longest request, once per model: a second
    evaluation (as a trial's final one after its baseline) reuses the measurement."""
    model, tokenizer = load(long_context_model)
    shapes = input_shapes(model)
    budget = 48 * 2**20
    sizer = BatchSizer(gauge=LogitsGauge(model, budget=budget))
    evaluate_model(model, tokenizer, evaluation(), compute_dtype=torch.float32, sizer=sizer)

    longest = max(length for _, length in shapes)
    assert longest < 4096 < LONG_CONTEXT
    # Three small passes at the longest (MMLU) request; the shorter perplexity documents that
    # follow reuse that measurement.
    assert sizer.probes == [(1, longest), (1, longest), (2, longest)]
    assert set(sizer.chosen) == {"loglikelihood", "rolling"}
    expected = int(budget * HEADROOM // (8 * model.config.vocab_size * longest))
    assert sizer.chosen["loglikelihood"] == min(expected, 64)  # the arithmetic of the module doc

    probes, passes = len(sizer.probes), len(shapes)
    evaluate_model(model, tokenizer, evaluation(), compute_dtype=torch.float32, sizer=sizer)
    assert len(sizer.probes) == probes  # measured once per model, not per evaluation
    assert max(length for _, length in shapes[passes:]) == longest


def test_running_out_of_memory_retries_the_evaluation_with_half_the_batch(long_context_model: Path) -> None:
    """A real torch.OutOfMemoryError from the model's forward pass for batches above 2."""
    model, tokenizer = load(long_context_model)
    sizer = BatchSizer(gauge=LogitsGauge(model, budget=2**40), max_batch=4)

    def too_big(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if (args[0] if args else kwargs["input_ids"]).shape[0] > 2:
            raise torch.OutOfMemoryError("injected: out of memory above batch 2")

    model.register_forward_pre_hook(too_big, with_kwargs=True)
    outcome = evaluate_model(model, tokenizer, evaluation(), compute_dtype=torch.float32, sizer=sizer)
    assert outcome.attempts == 2
    assert max(outcome.batch_size.values()) == 2
    reference = evaluate_model(model, tokenizer, evaluation(batch_size=1), compute_dtype=torch.float32)
    assert outcome.metrics["eval/perplexity"] == pytest.approx(reference.metrics["eval/perplexity"], rel=1e-5)

    sizer = BatchSizer(fixed=4)  # a configured batch is the user's: it is not shrunk
    with pytest.raises(torch.OutOfMemoryError):
        evaluate_model(model, tokenizer, evaluation(), compute_dtype=torch.float32, sizer=sizer)


def test_on_a_cpu_nothing_is_probed(long_context_model: Path) -> None:
    model, tokenizer = load(long_context_model)
    shapes = input_shapes(model)
    outcome = evaluate_model(model, tokenizer, evaluation(), compute_dtype=torch.float32)
    assert outcome.batch_size == {"loglikelihood": 4, "rolling": 4}
    assert max(batch for batch, _ in shapes) <= 4  # only scoring passes, none of them a probe
