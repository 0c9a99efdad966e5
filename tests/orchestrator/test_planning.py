"""Sweep specs: validation with key paths, deterministic planning, cell identity."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from qsweep.orchestrator.sweep.planning import load_plan
from qsweep.trainers.errors import ConfigError


@pytest.fixture
def write_spec(tmp_path: Path, tiny_trial):
    """Write a spec over the tiny model: ``write_spec(grid={...}, seeds=[...])`` -> path."""
    def write(**spec) -> Path:
        data = {"name": "unit", "trial": tiny_trial(train={"max_steps": 2}, eval={"tasks": []}), **spec}
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def problems(path: Path, overrides: list[str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_plan(path, overrides)
    return dict(caught.value.problems)


def test_grid_is_full_factorial_with_stable_cell_hashes(write_spec) -> None:
    path = write_spec(grid={"quant.type": ["nf4", "fp4"], "quant.double_quant": [True, False]},
                      seeds=[0, 1, 2])
    plan = load_plan(path)
    assert [tuple(c.labels.values()) for c in plan.cells] == [
        ("nf4", "true"), ("nf4", "false"), ("fp4", "true"), ("fp4", "false")]
    assert list(plan.cells[0].labels) == ["quant.type", "quant.double_quant"]
    assert plan.total_trials == 12 and len(plan.studies()) == 12
    assert len({c.hash for c in plan.cells}) == 4
    assert [c.hash for c in load_plan(path).cells] == [c.hash for c in plan.cells]  # deterministic
    trial = plan.trial_config(plan.cells[2], seed=2)
    assert (trial.quant.type, trial.quant.double_quant, trial.train.seed) == ("fp4", True, 2)
    # A cell's hash ignores the seed: all seeds of a cell share it.
    assert {s.cell.hash for s in plan.studies() if s.cell.index == 0} == {plan.cells[0].hash}


def test_named_axis_bundles_settings_and_16_bit_ignores_the_4_bit_type(write_spec) -> None:
    path = write_spec(grid={"data_type": {"16-bit": {"quant.bits": 16}, "NF4+DQ": {"quant.type": "nf4"},
                                          "FP4": {"quant.type": "fp4", "quant.double_quant": False}}})
    plan = load_plan(path)
    assert [c.labels["data_type"] for c in plan.cells] == ["16-bit", "NF4+DQ", "FP4"]
    assert [c.config.quant.label for c in plan.cells] == ["16-bit", "NF4+DQ", "FP4"]


def test_search_trials_per_cell_and_seed(write_spec) -> None:
    path = write_spec(grid={"quant.type": ["nf4", "fp4"]}, seeds=[0, 1],
                      search={"n_trials": 3, "sampler": "random",
                              "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2,
                                                                "log": True}}})
    plan = load_plan(path)
    assert plan.total_trials == 2 * 2 * 3
    assert all(s.n_trials == 3 for s in plan.studies())
    assert plan.trial_config(plan.cells[0], 0, {"train.learning_rate": 5e-3}).train.learning_rate == 5e-3


def test_every_problem_is_reported_with_its_key_path(write_spec) -> None:
    path = write_spec(
        grid={"quant.type": ["nf4", "int4"], "lora.rank": [8], "lora.r": [0, 8]},
        seeds=[0, 0],
        search={"n_trials": 2, "space": {"train.learning_rate": {"type": "float", "low": 0.1, "high": 0.01},
                                         "lora.dropout": {"type": "categorical", "choices": [0.0, 1.5]}}},
        objectives=[{"metric": "eval/mmlu_offline/acc", "direction": "maximize"}],
        concurrency=0)
    found = problems(path)
    assert "lists a seed twice" in found["seeds"]
    assert found["concurrency"].startswith("must be > 0")
    assert "must be >= low" in found["search.space.train.learning_rate.high"]
    path = write_spec(
        grid={"quant.type": ["nf4", "int4"], "lora.rank": [8], "lora.r": [0, 8]},
        search={"n_trials": 2, "space": {"lora.dropout": {"type": "categorical", "choices": [0.0, 1.5]}}},
        objectives=[{"metric": "eval/mmlu_offline/acc", "direction": "maximize"}])
    found = problems(path)
    assert "must be one of" in found["grid.quant.type[1]"] and "'int4'" in found["grid.quant.type[1]"]
    assert "has no key 'rank'" in found["grid.lora.rank[0]"]
    assert found["grid.lora.r[0]"] == "must be > 0, got 0"
    assert found["search.space.lora.dropout.choices[1]"].startswith("must be < 1")
    path = write_spec(objectives=[{"metric": "eval/mmlu_offline/acc", "direction": "maximize"}])
    assert "eval.tasks is empty" in problems(path)["objectives[0].metric"]


def test_bad_trial_settings_and_overrides_name_their_source(write_spec) -> None:
    path = write_spec(trial={"model": {"name": "./nowhere"}, "data": {"name": "alpaca"}})
    found = problems(path)
    assert "does not exist" in found["trial.model.name"]
    found = problems(write_spec(), ["seeds=[]", "concurrency=two"])
    assert found["seeds"].endswith("(from the command line)")
    assert "integer" in found["concurrency"]


def test_contradictory_cells_and_duplicate_cells_are_errors(write_spec) -> None:
    found = problems(write_spec(grid={"quant.bits": [4, 16], "quant.type": ["fp4"]}))
    assert any("quant.bits=16" in key and "'fp4' is a 4-bit data type" in message
               for key, message in found.items())
    # With 16 bits, double quantization does not matter: both cells would be one trial.
    found = problems(write_spec(grid={"data_type": {"a": {"quant.bits": 16, "quant.double_quant": True},
                                                    "b": {"quant.bits": 16, "quant.double_quant": False}}}))
    assert "resolve to the same trial config" in found["grid"]


def test_search_axes_and_samplers_are_checked(write_spec) -> None:
    path = write_spec(grid={"train.learning_rate": [1e-3]},
                      search={"n_trials": 9, "space": {"train.learning_rate": {"type": "float", "low": 1e-4,
                                                                               "high": 1e-2}}})
    assert "also a grid axis" in problems(path)["search.space.train.learning_rate"]
    path = write_spec(search={"n_trials": 9, "sampler": "grid",
                              "space": {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2},
                                        "lora.r": {"type": "categorical", "choices": [4, 8]}}})
    assert "grid needs categorical axes" in problems(path)["search.sampler"]
    path = write_spec(search={"n_trials": 3, "sampler": "grid",
                              "space": {"lora.r": {"type": "categorical", "choices": [4, 8]}}})
    assert "has 2 points" in problems(path)["search.n_trials"]
    path = write_spec(search={"n_trials": 2, "sampler": "cmaes",
                              "space": {"lora.r": {"type": "categorical", "choices": [4, 8]}}})
    assert "cmaes samples int/float axes only" in problems(path)["search.sampler"]
    path = write_spec(objectives=[{"metric": "train/final_loss", "direction": "minimize"},
                                  {"metric": "train/peak_memory_bytes", "direction": "minimize"}],
                      search={"n_trials": 2, "sampler": "cmaes",
                              "space": {"lora.r": {"type": "int", "low": 4, "high": 8}}})
    assert "2 objectives need one of tpe, random, nsga2" in problems(path)["search.sampler"]
    space = {"train.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2},
             "lora.r": {"type": "int", "low": 4, "high": 16}}
    path = write_spec(search={"n_trials": 2, "space": space, "enqueue": [
        {"train.learning_rate": 1.0, "lora.r": 8}, {"lora.dropout": 0.1, "lora.r": 4.5}, {"lora.r": 8}]})
    found = problems(path)
    assert "more than n_trials (2)" in found["search.enqueue"]
    assert "outside [0.0001, 0.01]" in found["search.enqueue[0].train.learning_rate"]
    assert "lora.dropout not in search.space" in found["search.enqueue[1]"]
    assert "must be an integer" in found["search.enqueue[1].lora.r"]


def test_plan_command_prints_cells_and_total(write_spec, capsys) -> None:
    from qsweep.orchestrator.cli.main import main

    path = write_spec(grid={"quant.type": ["nf4", "fp4"]}, seeds=[0, 1])
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 cells x 2 seeds = 4 trials" in out and "nf4" in out and "fp4" in out
    assert main(["plan", str(path), "seeds=[0,0]"]) == 2


def test_reports_name_grid_axes_and_presets(write_spec) -> None:
    found = problems(write_spec(grid={"quant.type": ["nf4", "fp4"]},
                                reports=[{"preset": "table2"}, {"preset": "table9"}, {"metric": "x"}]))
    assert "must be one of table2, table4" in found["reports[1].preset"]
    assert "give a preset" in found["reports[2].preset"]
    found = problems(write_spec(grid={"quant.type": ["nf4", "fp4"]}, reports=[
        {"preset": "table2"}, {"rows": "quant.type", "columns": ["model"], "metric": "eval/x"}]))
    assert found["reports[0].rows"] == "not a grid axis: data_type (axes: quant.type)"
    assert found["reports[1].columns"].startswith("not a grid axis: model")
    data_types = {"NF4": {"quant.type": "nf4"}, "FP4": {"quant.type": "fp4"}}
    plan = load_plan(write_spec(grid={"data_type": data_types},
                                reports=[{"preset": "table2", "metric": "eval/perplexity"}]))
    assert plan.spec.reports[0].overrides() == {"metric": "eval/perplexity"}


def test_a_named_axis_label_is_checked_with_all_its_settings(write_spec, repeated_data: Path) -> None:
    """data.name=flan_v2 needs data.path: the two settings of one label are valid together."""
    flan = repeated_data.parent / "flan.jsonl"
    flan.write_text('{"inputs": "a", "targets": "b"}\n')
    path = write_spec(grid={"dataset": {"FLAN": {"data.name": "flan_v2", "data.path": str(flan)}}})
    spec = yaml.safe_load(path.read_text())
    spec["trial"]["data"] = {"name": "alpaca"}  # a hub recipe, which reads no local file
    path.write_text(yaml.safe_dump(spec))
    plan = load_plan(path)
    assert plan.cells[0].config.data.name == "flan_v2"


SHIPPED = Path(__file__).resolve().parents[2] / "sweeps"


@pytest.mark.parametrize("spec", sorted(p.name for p in SHIPPED.glob("*.yaml")))
def test_shipped_specs_plan_and_headers_state_their_estimate(spec: str, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    """Each spec in sweeps/ is valid as shipped; the real-scale ones state the trial count and the
    GPU-hours that ``qsweep plan`` prints (the FLAN v2 file they need is stood in for here)."""
    import re

    from qsweep.orchestrator.cli.main import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "flan_v2.jsonl").write_text('{"inputs": "a", "targets": "b"}\n')
    assert main(["plan", str(SHIPPED / spec)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    trials = int(re.search(r"= (\d+) trials", out).group(1))
    header = " ".join(line.lstrip("# ") for line in (SHIPPED / spec).read_text().splitlines()
                      if line.startswith("#"))
    assert re.search(rf"\b{trials} trials\b", header), f"{spec} header does not state {trials} trials"
    if "GPU-hours" in header:
        stated = float(re.search(r"about ([\d,.]+) GPU-hours", header).group(1).replace(",", ""))
        printed = float(re.search(r"([\d,.]+) GPU-hours in all", out).group(1).replace(",", ""))
        assert round(printed) == stated
        stated_gib = float(re.search(r"needs about ([\d.]+) GiB", header).group(1))
        printed_gib = float(re.search(r"up to ([\d.]+) GiB", out).group(1))
        assert printed_gib == stated_gib


def test_a_spec_key_replaces_the_base_value_whole(write_spec) -> None:
    """The offline preset limits perplexity_offline; a spec (or override) clears those limits."""
    path = write_spec()
    spec = yaml.safe_load(path.read_text())
    spec["base"] = "smollm2-offline"
    spec["trial"] = {"eval": {"tasks": ["perplexity_offline"], "task_limits": {}}}
    path.write_text(yaml.safe_dump(spec))
    assert load_plan(path).cells[0].config.eval.task_limits == {}
    plan = load_plan(path, ["trial.eval.task_limits={perplexity_offline: 7}"])
    assert plan.cells[0].config.eval.task_limits == {"perplexity_offline": 7}
    assert plan.cells[0].config.train.max_steps == 30  # the base's other keys stay


def test_the_estimate_evaluates_a_cells_untuned_base_once() -> None:
    """The seeds of a cell share its step-0 evaluation, on the step-0 tasks only."""
    from qsweep.orchestrator.sweep.estimate import MMLU_QUESTIONS_PER_S_8B, PARAMS_8B, estimate_sweep
    from qsweep.trainers.cost_model import shape_of

    demo = SHIPPED / "demo.yaml"
    one, three = (estimate_sweep(load_plan(demo, [f"seeds={seeds}"])) for seeds in ("[0]", "[0,1,2]"))
    shape = shape_of(load_plan(demo).cells[0].config.model.name)
    rate = MMLU_QUESTIONS_PER_S_8B * PARAMS_8B / shape.params
    baseline_hours = 5 * 150 / rate / 3600  # 5 cells x 150 perplexity documents
    assert three.gpu_hours == pytest.approx(3 * one.gpu_hours - 2 * baseline_hours)


def test_the_estimate_offers_a_fast_layout_of_the_same_examples(monkeypatch, tmp_path: Path) -> None:
    from qsweep.orchestrator.sweep.estimate import estimate_sweep, fast_layout
    from qsweep.trainers.cost_model import shape_of, training_cost

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "flan_v2.jsonl").write_text('{"inputs": "a", "targets": "b"}\n')
    plan = load_plan(SHIPPED / "paper-table4.yaml")
    config = plan.trial_config(plan.cells[0], 0)
    fast = fast_layout(config)
    assert fast.train.batch_size == config.train.batch_size == 16
    assert fast.train.packing and fast.train.compile and fast.train.auto_layout
    shape = shape_of(config.model.name)
    assert training_cost(fast, shape).tokens == training_cost(config, shape).tokens  # the same training
    estimate = estimate_sweep(plan)
    assert 0 < estimate.fast_gpu_hours < estimate.gpu_hours / 3


def test_a_sweep_grows_by_search_trials_but_not_by_another_search() -> None:
    from qsweep.orchestrator.sweep.planning import growth

    spec = SHIPPED / "smollm2-lr-search.yaml"
    plan = load_plan(spec)
    assert growth(plan, load_plan(spec)) == "nothing"
    assert plan.spec.seeds == [0, 1]
    assert growth(plan, load_plan(spec, ["search.n_trials=6", "seeds=[0,1,2,3]"])) == \
        "2 seeds, 2 search trials per cell and seed"
    assert growth(plan, load_plan(spec, ["search.n_trials=3"])) is None  # fewer trials
    assert growth(plan, load_plan(spec, ["search.sampler=random"])) is None
    maximized = "objectives=[{metric: eval/perplexity, direction: maximize}]"
    assert growth(plan, load_plan(spec, [maximized])) is None
