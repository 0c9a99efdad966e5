"""How a step's examples are laid out into micro-batches (``train.group_by_length``,
``train.packing``) changes padding, not training: the same examples per step, the same loss and
LoRA gradients, the same loss curve, and an exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from qsweep.trainers import checkpoint as ckpt
from qsweep.trainers.examples import IGNORE_INDEX, BatchOrder, collate, group_by_length
from qsweep.trainers.hashing import sha256_file
from qsweep.trainers.loop import prepare, train
from qsweep.trainers.packing import (
    PACKED_ATTENTION,
    PackingChoice,
    choose_packing,
    pack,
    packed_attention,
    real_tokens,
)


def padding(micro_batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch)
               for batch in micro_batches)


@pytest.mark.parametrize("seed", range(20))
def test_a_step_keeps_its_examples_and_sizes_and_pads_less(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 300, size=50).tolist()
    order = BatchOrder(len(lengths), micro_batch_size=int(rng.integers(1, 6)), seed=seed)
    accum = int(rng.integers(1, 8))
    position = int(rng.integers(0, 40))
    plain = [order.micro_batch(position + k) for k in range(accum)]
    grouped = group_by_length(plain, lengths)

    assert sorted(i for b in grouped for i in b) == sorted(i for b in plain for i in b)
    assert [len(b) for b in grouped] == [len(b) for b in plain]
    flat = [lengths[i] for b in grouped for i in b]
    assert flat == sorted(flat, reverse=True)
    assert padding(grouped, lengths) <= padding(plain, lengths)
    assert group_by_length(plain, lengths) == grouped  # deterministic


@pytest.fixture(scope="module")
def varied_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prompts and responses of very different lengths (4 to 60 words)."""
    words = "the cat sat on a mat while rain fell over quiet hills and rivers".split()  # noqa: SIM905
    rows = [{"prompt": "Q: " + " ".join(words[(i * 7 + j) % len(words)] for j in range(4 + (i * 13) % 57)),
             "response": " A: " + " ".join(words[(i + j) % len(words)] for j in range(1 + (i * 5) % 9))}
            for i in range(24)]
    path = tmp_path_factory.mktemp("varied") / "varied.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def layout(varied_data: Path, **train) -> dict:
    return {"data": {"path": str(varied_data)}, "lora": {"dropout": 0.0},
            "train": {"micro_batch_size": 2, "grad_accum_steps": 4, "max_steps": 6, **train}}


def step_loss_and_grads(setup, micro_batches: list[list[int]],
                        packed: bool = False) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimizer step's loss and LoRA gradients, computed as the training loop does."""
    model, pad_id = setup.qlora.model, setup.qlora.tokenizer.pad_token_id
    model.zero_grad(set_to_none=True)
    examples = [[setup.examples[i] for i in batch] for batch in micro_batches]
    batches = [pack(b) if packed else collate(b, pad_id) for b in examples]
    target_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    total = 0.0
    for batch in batches:
        with packed_attention(model, packed):
            loss = model(**batch, num_items_in_batch=target_tokens).loss
            loss.backward()
        total += float(loss.detach())
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    return total, grads


def test_grouping_gives_the_plain_step_loss_and_lora_gradients(tiny_config, varied_data: Path) -> None:
    cfg = tiny_config(**layout(varied_data))
    setup = prepare(cfg)
    lengths = [len(e.input_ids) for e in setup.examples]
    order = BatchOrder(len(lengths), 2, seed=0)
    plain = [order.micro_batch(k) for k in range(4)]
    grouped = group_by_length(plain, lengths)
    assert grouped != plain and padding(grouped, lengths) < padding(plain, lengths)

    plain_loss, plain_grads = step_loss_and_grads(setup, plain)
    grouped_loss, grouped_grads = step_loss_and_grads(setup, grouped)
    assert grouped_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == grouped_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(grouped_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_a_grouped_run_follows_the_plain_loss_curve(tiny_config, varied_data: Path, tmp_path: Path) -> None:
    plain = train(tiny_config(**layout(varied_data)), tmp_path / "plain")
    grouped = train(tiny_config(**layout(varied_data, group_by_length=True)), tmp_path / "grouped")
    assert [m.step for m in grouped.history] == [m.step for m in plain.history] == list(range(1, 7))
    assert [m.loss for m in grouped.history] == pytest.approx([m.loss for m in plain.history], rel=1e-4)
    # the same real tokens per step (padding is not counted)
    assert [m.tokens for m in grouped.history] == [m.tokens for m in plain.history]


class Crash(Exception):
    pass


def test_a_grouped_run_resumes_mid_epoch_with_the_same_losses(tiny_config, varied_data: Path,
                                                              tmp_path: Path) -> None:
    # 24 examples, 8 per step: an epoch is 3 steps; the crash at step 5 is mid-epoch
    cfg = tiny_config(**layout(varied_data, group_by_length=True, checkpoint_every=2))
    reference = train(cfg, tmp_path / "uninterrupted")
    resumed = crash_at_step_5_and_resume(cfg, tmp_path / "interrupted")
    assert [m.loss for m in resumed.history] == [m.loss for m in reference.history[4:]]


def crash_at_step_5_and_resume(cfg, workdir: Path):
    """Train ``cfg`` (a checkpoint every 2 steps), crash after step 5, resume: the resumed run."""
    def crash_at_5(metrics) -> None:
        if metrics.step == 5:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, workdir, crash_at_5)
    resumed = train(cfg, workdir)
    assert resumed.resumed_from_step == 4
    return resumed


def test_grouping_off_keeps_the_hash_of_configs_written_before_it(tiny_config, varied_data: Path) -> None:
    off, on = tiny_config(**layout(varied_data)), tiny_config(**layout(varied_data, group_by_length=True))
    assert "group_by_length" not in off.identity()["train"]
    assert on.identity()["train"]["group_by_length"] is True and on.content_hash() != off.content_hash()


def per_example_losses(setup, micro_batches: list[list[int]]) -> dict[int, float]:
    """Each example's summed token loss, computed inside the micro-batch a layout puts it in."""
    model, pad_id = setup.qlora.model, setup.qlora.tokenizer.pad_token_id
    losses: dict[int, float] = {}
    with torch.no_grad():
        for batch_indices in micro_batches:
            batch = collate([setup.examples[i] for i in batch_indices], pad_id)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            token_losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2).float(), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX,
                reduction="none")
            for row, index in enumerate(batch_indices):
                losses[index] = float(token_losses[row].sum())
    return losses


def test_every_layout_gives_each_example_the_same_loss(tiny_config, varied_data: Path) -> None:
    setup = prepare(tiny_config(**layout(varied_data)))
    lengths = [len(e.input_ids) for e in setup.examples]
    plain = [BatchOrder(len(lengths), 2, seed=0).micro_batch(k) for k in range(4)]
    step = [i for batch in plain for i in batch]
    layouts = {"plain 2 x 4": plain, "grouped 2 x 4": group_by_length(plain, lengths),
               "one micro-batch of 8": [step], "1 x 8": [[i] for i in step]}
    reference = per_example_losses(setup, layouts["1 x 8"])  # no padding at all
    for name, micro_batches in layouts.items():
        losses = per_example_losses(setup, micro_batches)
        assert losses.keys() == reference.keys(), name
        for index, loss in losses.items():
            assert loss == pytest.approx(reference[index], rel=1e-5), (name, index)


# --- packing: a micro-batch's examples in one row, each attending only to itself ---


def test_a_packed_row_holds_the_padded_targets_one_for_one(tiny_config, varied_data: Path) -> None:
    setup = prepare(tiny_config(**layout(varied_data, response_only_loss=False)))
    examples = setup.examples[:5]
    row = pack(examples)
    padded = collate(examples, setup.qlora.tokenizer.pad_token_id)
    lengths = [len(e.input_ids) for e in examples]
    assert row["input_ids"].shape == (1, sum(lengths))
    assert real_tokens(row) == real_tokens(padded) == sum(lengths)
    assert row["cu_seq_lens_q"].tolist() == np.cumsum([0, *lengths]).tolist()
    assert row["max_length_q"] == max(lengths)
    starts = row["cu_seq_lens_q"][:-1].tolist()
    assert row["position_ids"][0, starts].tolist() == [0] * 5  # positions restart with each example
    # every (next token) target of the padded rows, and nothing across examples
    packed_targets = [(int(t), int(row["input_ids"][0, i])) for i, t in enumerate(row["labels"][0])
                      if t != IGNORE_INDEX]
    padded_targets = [(int(t), int(padded["input_ids"][r, i])) for r in range(5)
                      for i, t in enumerate(padded["labels"][r]) if i > 0 and t != IGNORE_INDEX]
    assert packed_targets == padded_targets
    targets = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in (row, padded)]
    assert targets[0] == targets[1] == len(padded_targets)


def test_packing_keeps_response_only_masking(tiny_config, varied_data: Path) -> None:
    setup = prepare(tiny_config(**layout(varied_data)))  # response_only_loss: the default
    row = pack(setup.examples[:4])
    offset = 0
    for example in setup.examples[:4]:
        labels = row["labels"][0, offset:offset + len(example.input_ids)].tolist()
        prompt = sum(label == IGNORE_INDEX for label in example.labels)
        assert labels[:prompt] == [IGNORE_INDEX] * prompt and labels[prompt:] == list(example.labels[prompt:])
        offset += len(example.input_ids)


def packed_per_example_losses(setup, micro_batches: list[list[int]]) -> dict[int, float]:
    """Each example's summed token loss from the packed row of its micro-batch."""
    model = setup.qlora.model
    losses: dict[int, float] = {}
    with torch.no_grad(), packed_attention(model):
        for batch_indices in micro_batches:
            row = pack([setup.examples[i] for i in batch_indices])
            inputs = {k: v for k, v in row.items() if k != "labels"}
            logits = model(**inputs).logits
            token_losses = torch.nn.functional.cross_entropy(
                logits[0, :-1].float(), row["labels"][0, 1:], ignore_index=IGNORE_INDEX, reduction="none")
            bounds = row["cu_seq_lens_q"].tolist()
            for k, index in enumerate(batch_indices):
                # the targets of example k are predicted from positions bounds[k] .. bounds[k+1]-2
                losses[index] = float(token_losses[bounds[k]:bounds[k + 1] - 1].sum())
    return losses


def test_packed_examples_get_the_loss_they_get_alone(tiny_config, varied_data: Path) -> None:
    setup = prepare(tiny_config(**layout(varied_data)))
    lengths = [len(e.input_ids) for e in setup.examples]
    step = [i for k in range(4) for i in BatchOrder(len(lengths), 2, seed=0).micro_batch(k)]
    alone = per_example_losses(setup, [[i] for i in step])
    for micro_batches in ([step], [step[:3], step[3:]]):
        packed = packed_per_example_losses(setup, micro_batches)
        assert packed.keys() == alone.keys()
        for index, loss in packed.items():
            assert loss == pytest.approx(alone[index], rel=1e-5), index


def test_packing_gives_the_plain_step_loss_and_lora_gradients(tiny_config, varied_data: Path) -> None:
    setup = prepare(tiny_config(**layout(varied_data)))
    order = BatchOrder(len(setup.examples), 2, seed=0)
    plain = [order.micro_batch(k) for k in range(4)]
    plain_loss, plain_grads = step_loss_and_grads(setup, plain)
    packed_loss, packed_grads = step_loss_and_grads(setup, plain, packed=True)
    assert packed_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain_grads.keys() == packed_grads.keys() and len(plain_grads) > 0
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert setup.qlora.model.config._attn_implementation != PACKED_ATTENTION  # restored after each pass


def test_a_packed_run_follows_the_plain_loss_curve_and_resumes_exactly(tiny_config, varied_data: Path,
                                                                       tmp_path: Path) -> None:
    plain = train(tiny_config(**layout(varied_data)), tmp_path / "plain")
    cfg = tiny_config(**layout(varied_data, packing=True, checkpoint_every=2))
    packed = train(cfg, tmp_path / "packed")
    assert [m.loss for m in packed.history] == pytest.approx([m.loss for m in plain.history], rel=1e-4)
    assert [m.tokens for m in packed.history] == [m.tokens for m in plain.history]

    resumed = crash_at_step_5_and_resume(cfg, tmp_path / "interrupted")  # mid-epoch: 8 of 24 a step
    assert [m.loss for m in resumed.history] == [m.loss for m in packed.history[4:]]


def test_packing_with_an_auto_micro_batch_trains_the_same_steps(tiny_config, varied_data: Path,
                                                                tmp_path: Path) -> None:
    common = {"micro_batch_size": "auto", "batch_size": 8, "max_steps": 3}
    padded = train(tiny_config(**layout(varied_data, **common)), tmp_path / "padded")
    packed = train(tiny_config(**layout(varied_data, packing=True, **common)), tmp_path / "packed")
    assert packed.micro_batch_size == 8  # on CPU the whole step is one micro-batch: one packed row
    assert [m.loss for m in packed.history] == pytest.approx([m.loss for m in padded.history], rel=1e-4)


def test_outside_a_packed_pass_the_model_attends_as_before(tiny_config, varied_data: Path) -> None:
    """Evaluation after packed training: a padded batch through the packed attention's
    fallback gives transformers' SDPA result."""
    setup = prepare(tiny_config(**layout(varied_data)))
    model = setup.qlora.model
    batch = collate(setup.examples[:3], setup.qlora.tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        usual = model(**inputs).logits
        with packed_attention(model):
            fallback = model(**inputs).logits
    torch.testing.assert_close(fallback, usual)


def test_packing_auto_and_off_share_the_hash_of_configs_written_before_packing(tiny_config,
                                                                             varied_data: Path) -> None:
    off, auto, on = (tiny_config(**layout(varied_data, packing=value)) for value in (False, "auto", True))
    assert tiny_config(**layout(varied_data)).train.packing == "auto"  # the default
    assert "packing" not in off.identity()["train"] and "packing" not in auto.identity()["train"]
    assert auto.content_hash() == off.content_hash()
    assert on.identity()["train"]["packing"] is True and on.content_hash() != off.content_hash()


def test_packing_auto_packs_only_where_it_pays_and_says_why(tiny_config, varied_data: Path,
                                                             tmp_path: Path) -> None:
    setup = prepare(tiny_config(**layout(varied_data)))
    model, cpu = setup.qlora.model, torch.device("cpu")
    assert choose_packing(True, False, cpu, model) == PackingChoice(True, "configured")
    assert choose_packing(False, True, cpu, model) == PackingChoice(False, "configured")
    one = choose_packing("auto", False, cpu, model)
    assert not one.packed and "one example a micro-batch" in one.why
    on_cpu = choose_packing("auto", True, cpu, model)
    assert not on_cpu.packed and "on cpu" in on_cpu.why
    assert choose_packing("auto", True, cpu, model, kept=True).packed  # CPU runs packed rows exactly
    assert choose_packing(False, True, cpu, model, kept=True) == PackingChoice(False, "configured")
    result = train(tiny_config(**layout(varied_data, max_steps=2)), tmp_path / "auto")
    assert result.packed is False and result.micro_batch_size == 2


def test_a_resumed_auto_run_keeps_the_packing_its_checkpoint_recorded(tiny_config, varied_data: Path,
                                                                       tmp_path: Path) -> None:
    """A run that packed (on a GPU) and resumes elsewhere goes on packing: its micro-batch was
    chosen for packed rows. Here the checkpoint of a CPU run is rewritten to say it packed."""
    cfg = tiny_config(**layout(varied_data, checkpoint_every=2))
    with pytest.raises(Crash):
        train(cfg, tmp_path, lambda metrics: _raise(Crash) if metrics.step == 3 else None)
    newest = ckpt.latest_checkpoint(tmp_path)
    state = json.loads((newest / ckpt.STATE_FILE).read_text())
    assert state["packed"] is False
    state["packed"] = True
    (newest / ckpt.STATE_FILE).write_text(json.dumps(state))
    manifest = json.loads((newest / ckpt.MANIFEST_FILE).read_text())
    manifest[ckpt.STATE_FILE] = {"bytes": (newest / ckpt.STATE_FILE).stat().st_size,
                                 "sha256": sha256_file(newest / ckpt.STATE_FILE)}
    (newest / ckpt.MANIFEST_FILE).write_text(json.dumps(manifest))
    resumed = train(cfg, tmp_path)
    assert resumed.resumed_from_step == 2 and resumed.packed is True
    packed = train(tiny_config(**layout(varied_data, packing=True)), tmp_path / "packed")
    assert [m.loss for m in resumed.history] == pytest.approx([m.loss for m in packed.history[2:]], rel=1e-4)


def _raise(error: type[Exception]) -> None:
    raise error


def checkpointed_layers(setup) -> list[bool]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m.gradient_checkpointing for m in setup.qlora.model.modules()
            if isinstance(m, GradientCheckpointingLayer)]


def test_relaxed_checkpointing_keeps_the_last_layers_and_gradients(tiny_config, varied_data: Path) -> None:
    def checkpointing(**train):
        return prepare(tiny_config(**layout(varied_data, gradient_checkpointing=True, **train)))

    full, relaxed, everything = checkpointing(), checkpointing(uncheckpointed_layers=1), \
        checkpointing(uncheckpointed_layers=99)
    layers = len(checkpointed_layers(full))
    assert layers >= 2 and all(checkpointed_layers(full))
    assert checkpointed_layers(relaxed) == [True] * (layers - 1) + [False]
    assert not any(checkpointed_layers(everything))

    assert_same_step(full, relaxed, micro_batches=4, rel=1e-6, atol=1e-7)


def assert_same_step(reference, other, micro_batches: int, rel: float, atol: float) -> None:
    """One optimizer step of ``micro_batches`` micro-batches gives ``reference``'s loss and LoRA
    gradients on ``other`` (another way of computing the same model)."""
    order = BatchOrder(len(reference.examples), 2, seed=0)
    batches = [order.micro_batch(k) for k in range(micro_batches)]
    reference_loss, reference_grads = step_loss_and_grads(reference, batches)
    other_loss, other_grads = step_loss_and_grads(other, batches)
    assert other_loss == pytest.approx(reference_loss, rel=rel)
    assert reference_grads.keys() == other_grads.keys() and len(reference_grads) > 0
    for name, grad in reference_grads.items():
        torch.testing.assert_close(other_grads[name], grad, rtol=10 * rel, atol=atol, msg=name)


def test_relaxed_checkpointing_is_not_part_of_the_identity(tiny_config, varied_data: Path) -> None:
    full = tiny_config(**layout(varied_data, gradient_checkpointing=True))
    relaxed = tiny_config(**layout(varied_data, gradient_checkpointing=True, uncheckpointed_layers=3))
    assert relaxed.content_hash() == full.content_hash()


def test_compiled_layers_give_the_plain_step_loss_and_lora_gradients(tiny_config, varied_data: Path) -> None:
    from qsweep.trainers.model import decoder_layers

    plain = prepare(tiny_config(**layout(varied_data)))
    compiled = prepare(tiny_config(**layout(varied_data, compile=True)))
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(compiled.qlora.model))
    assert all(layer._compiled_call_impl is None for layer in decoder_layers(plain.qlora.model))
    assert_same_step(plain, compiled, micro_batches=2, rel=1e-5, atol=1e-6)
    assert tiny_config(**layout(varied_data, compile=True)).content_hash() == \
        tiny_config(**layout(varied_data)).content_hash()


def test_embeddings_in_the_compute_dtype_train_with_norms_in_fp32(tiny_config, varied_data: Path,
                                                                 tmp_path: Path) -> None:
    def bf16(fp32_embeddings: bool):
        return tiny_config(**layout(varied_data, fp32_embeddings=fp32_embeddings, max_steps=2),
                           quant={"compute_dtype": "bf16"})

    upcast, kept = prepare(bf16(True)), prepare(bf16(False))
    for setup, dtype in ((upcast, torch.float32), (kept, torch.bfloat16)):
        model = setup.qlora.model
        assert model.get_input_embeddings().weight.dtype == dtype
        assert model.get_output_embeddings().weight.dtype == dtype
        norms = [p for name, p in model.named_parameters() if "norm" in name]
        assert norms and all(p.dtype == torch.float32 for p in norms)
    # it changes what is computed: a trial of its own, and it trains
    assert bf16(False).content_hash() != bf16(True).content_hash()
    assert "fp32_embeddings" not in bf16(True).identity()["train"]
    result = train(bf16(False), tmp_path / "bf16")
    assert [m.step for m in result.history] == [1, 2] and all(np.isfinite(m.loss) for m in result.history)
