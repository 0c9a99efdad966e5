"""``train.micro_batch_size: auto``: the config keeps the examples per step, the trainer picks
the micro-batch; a step's examples do not depend on the pick, and a resumed run keeps it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from qsweep.orchestrator.sweep.driver import smaller_micro_batch
from qsweep.trainers.checkpoint import latest_checkpoint, read_state
from qsweep.trainers.config_loading import validate
from qsweep.trainers.cost_model import KNOWN_SHAPES, divisors_descending, largest_fitting, training_cost
from qsweep.trainers.errors import ConfigError
from qsweep.trainers.layout import StepOrder
from qsweep.trainers.loop import choose_layout, prepare, train

AUTO = {"train": {"micro_batch_size": "auto", "batch_size": 8, "max_steps": 5}}


def problems(tiny_trial, **train) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        validate(tiny_trial(train=train))
    return dict(caught.value.problems)


def test_auto_needs_the_examples_per_step_and_a_fixed_layout_must_add_up(tiny_trial) -> None:
    assert "required" in problems(tiny_trial, micro_batch_size="auto")["train.batch_size"]
    mismatch = problems(tiny_trial, micro_batch_size=4, grad_accum_steps=2, batch_size=6)
    assert "4 x 2 = 8" in mismatch["train.batch_size"]
    bad = problems(tiny_trial, micro_batch_size="big")
    assert "positive integer or auto" in bad["train.micro_batch_size"]
    fixed = validate(tiny_trial(train={"micro_batch_size": 4, "grad_accum_steps": 2}))
    assert fixed.train.batch_size == 8 and "batch_size" not in fixed.identity()["train"]
    auto = validate(tiny_trial(**AUTO))
    assert "grad_accum_steps" not in auto.identity()["train"]  # unused with auto
    assert auto.identity()["train"]["micro_batch_size"] == "auto"


@pytest.mark.parametrize("num_examples", [5, 10, 13])
def test_a_steps_examples_do_not_depend_on_the_micro_batch(num_examples: int) -> None:
    batch = 12
    steps: dict[int, list[list[int]]] = {}
    for micro in divisors_descending(batch):
        order = StepOrder(num_examples, micro, seed=3)
        accum = batch // micro
        steps[micro] = [sorted(i for k in range(accum) for i in order.micro_batch(s * accum + k))
                        for s in range(4)]
    assert all(layout == steps[batch] for layout in steps.values())
    # the stream is the seeded epoch permutations, one after another: each example once per epoch
    stream = [i for step in range(4) for i in StepOrder(num_examples, batch, seed=3).micro_batch(step)]
    for epoch in range(len(stream) // num_examples):
        assert sorted(stream[epoch * num_examples:(epoch + 1) * num_examples]) == list(range(num_examples))


def test_the_largest_divisor_that_fits_is_chosen() -> None:
    assert largest_fitting(12, lambda micro: micro <= 5) == 4
    assert largest_fitting(16, lambda micro: True) == 16
    assert largest_fitting(16, lambda micro: False) == 1


def test_auto_on_cpu_trains_the_step_as_one_micro_batch_and_resumes_with_it(tiny_config,
                                                                            tmp_path: Path) -> None:
    cfg = tiny_config(train={**AUTO["train"], "checkpoint_every": 2})
    setup = prepare(cfg)
    layout = choose_layout(cfg, setup, setup.qlora.device, autocast=None)
    assert (layout.micro_batch_size, layout.grad_accum_steps) == (8, 1)
    assert choose_layout(cfg, setup, setup.qlora.device, None, kept=2).grad_accum_steps == 4

    reference = train(cfg, tmp_path / "uninterrupted")
    assert (reference.micro_batch_size, reference.grad_accum_steps) == (8, 1)

    class Crash(Exception):
        pass

    def crash_at_3(metrics) -> None:
        if metrics.step == 3:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, tmp_path / "interrupted", crash_at_3)
    assert read_state(latest_checkpoint(tmp_path / "interrupted")).micro_batch_size == 8
    resumed = train(cfg, tmp_path / "interrupted")
    assert resumed.resumed_from_step == 2
    assert [m.loss for m in resumed.history] == [m.loss for m in reference.history[2:]]
    assert json.loads(json.dumps(resumed.micro_batch_size)) == 8


def test_an_out_of_memory_auto_trial_is_not_halved_again(tiny_trial) -> None:
    assert smaller_micro_batch({"micro_batch_size": "auto", "grad_accum_steps": 16}, 0, 2) is None


def test_estimates_take_the_largest_micro_batch_the_reference_gpu_holds(tiny_trial) -> None:
    shape = KNOWN_SHAPES["meta-llama/Meta-Llama-3-8B"]
    auto = validate(tiny_trial(train={"micro_batch_size": "auto", "batch_size": 64}))
    chosen = training_cost(auto, shape)
    fits = [micro for micro in divisors_descending(64)
            if training_cost(auto, shape, micro_batch_size=micro).peak_bytes <= 0.9 * 80 * 2**30]
    assert fits and chosen.peak_bytes == training_cost(auto, shape, micro_batch_size=fits[0]).peak_bytes
    fixed = validate(tiny_trial(train={"micro_batch_size": 4, "grad_accum_steps": 16}))
    assert training_cost(fixed, shape).tokens == chosen.tokens  # the same examples either way

