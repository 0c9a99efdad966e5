"""The Optuna adapter against every storage a sweep may use: SQLite and PostgreSQL.

The same tests run on both (as Optuna tests its storages): a driver that starts again, with a
new StudyStore on the same storage, must find exactly what the last one left.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from qsweep.orchestrator.adapters.search import StudyStore
from qsweep.orchestrator.sweep.planning import load_plan


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def plan(tmp_path: Path, tiny_trial):
    spec = {
        "name": f"search-{tmp_path.name}",
        "trial": tiny_trial(train={"max_steps": 10}, eval={"tasks": []}),
        "grid": {"quant.type": ["nf4", "fp4"]},
        "seeds": [0, 1],
        "search": {"n_trials": 4, "sampler": "tpe",
                   "space": {"train.learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
                             "lora.target_modules": {"type": "categorical",
                                                     "choices": ["all-linear", ["q_proj", "v_proj"]]}},
                   "pruner": {"type": "median", "report_every": 2, "n_startup_trials": 2}},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_plan(path)


def test_ask_tell_and_a_restarted_driver_sees_the_same_trials(storage: str, plan) -> None:
    store = StudyStore(storage, plan.spec)
    first, second = plan.studies()[:2]
    asked = store.ask(first)
    assert asked.state == "RUNNING" and asked.number == 0
    assert 1e-5 <= asked.params["train.learning_rate"] <= 1e-2
    assert asked.params["lora.target_modules"] in ("all-linear", ["q_proj", "v_proj"])  # lists survive
    config = plan.trial_config(first.cell, first.seed, asked.params)
    assert config.train.learning_rate == asked.params["train.learning_rate"]
    store.set_attrs(first, 0, {"run_id": "abc", "adjust": {"train.micro_batch_size": 2}})
    store.tell(first, 0, "COMPLETE", [0.5])
    running = store.ask(first)
    store.set_attrs(first, running.number, {"run_id": "def"})
    store.ask(second)
    store.tell(second, 0, "FAIL")

    restarted = StudyStore(storage, plan.spec)
    records = restarted.trials(first)
    assert [(r.number, r.state) for r in records] == [(0, "COMPLETE"), (1, "RUNNING")]
    assert records[0].values == [0.5] and records[0].attrs["adjust"] == {"train.micro_batch_size": 2}
    assert records[1].attrs["run_id"] == "def" and records[1].params == running.params
    assert [r.state for r in restarted.trials(second)] == ["FAIL"]
    assert {first.name, second.name} <= restarted.existing_study_names()
    restarted.tell(first, 1, "PRUNED")
    assert [r.state for r in StudyStore(storage, plan.spec).trials(first)] == ["COMPLETE", "PRUNED"]


def test_the_median_pruner_stops_a_trial_behind_the_others(storage: str, plan) -> None:
    store = StudyStore(storage, plan.spec)
    study = plan.studies()[0]
    for loss in (1.0, 1.1):  # two finished trials: the pruner's start-up
        trial = store.ask(study)
        for step in (2, 4, 6):
            assert store.report(study, trial.number, step, loss) is False
        store.tell(study, trial.number, "COMPLETE", [loss])
    good, bad = store.ask(study), store.ask(study)
    assert store.report(study, good.number, 2, 0.5) is False
    assert store.report(study, bad.number, 2, 5.0) is True


def test_a_restarted_driver_reports_to_the_pruner_for_trials_asked_before(storage: str, plan) -> None:
    store = StudyStore(storage, plan.spec)
    study = plan.studies()[0]
    for loss in (1.0, 1.1):
        trial = store.ask(study)
        store.report(study, trial.number, 2, loss)
        store.tell(study, trial.number, "COMPLETE", [loss])
    good, bad = store.ask(study), store.ask(study)

    restarted = StudyStore(storage, plan.spec)  # the trials were asked by the driver before
    restarted.set_attrs(study, bad.number, {"run_id": "r"})
    assert restarted.report(study, good.number, 2, 0.5) is False
    assert restarted.report(study, bad.number, 2, 5.0) is True
    (record,) = [r for r in restarted.trials(study) if r.number == bad.number]
    assert record.state == "RUNNING" and record.attrs["run_id"] == "r"


def test_queued_parameters_come_first_once(storage: str, plan, tmp_path: Path) -> None:
    from qsweep.orchestrator.sweep.spec import SweepSpec

    data = plan.spec.model_dump(mode="json")
    data["search"]["enqueue"] = [{"train.learning_rate": 1e-3, "lora.target_modules": ["q_proj", "v_proj"]}]
    spec = SweepSpec.model_validate(data)
    study = plan.studies()[0]
    first = StudyStore(storage, spec).ask(study)
    assert first.params == {"train.learning_rate": 1e-3, "lora.target_modules": ["q_proj", "v_proj"]}
    again = StudyStore(storage, spec)  # a restarted driver does not queue them again
    assert again.ask(study).params != first.params
    assert len(again.trials(study)) == 2


def test_samplers_are_seeded_per_study(storage: str, plan, tmp_path: Path) -> None:
    first = [StudyStore(storage, plan.spec).ask(s).params for s in plan.studies()[:2]]
    assert first[0] != first[1]  # each (cell, seed) draws its own values
    elsewhere = StudyStore(f"sqlite:///{tmp_path / 'elsewhere.db'}", plan.spec)
    assert [elsewhere.ask(s).params for s in plan.studies()[:2]] == first  # and the same everywhere


def test_one_registry_names_the_samplers_and_pruners_the_spec_accepts_and_optuna_builds() -> None:
    import optuna
    from qsweep.orchestrator.adapters.search import PRUNER_BUILDERS, SAMPLER_BUILDERS, pruner, sampler
    from qsweep.orchestrator.sweep.spec import PRUNERS, SAMPLERS, PrunerSpec, SearchSpec, SweepSpec

    assert list(SAMPLER_BUILDERS) == list(SAMPLERS) and list(PRUNER_BUILDERS) == list(PRUNERS)
    expected = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "grid": optuna.samplers.GridSampler,
                "nsga2": optuna.samplers.NSGAIISampler}
    for name, kind in SAMPLERS.items():
        axis = ({"type": "categorical", "choices": [8, 16]} if kind.axes == "categorical"
                else {"type": "int", "low": 8, "high": 16})
        search = SearchSpec.model_validate({"space": {"lora.r": axis}, "n_trials": 2, "sampler": name})
        spec = SweepSpec.model_construct(search=search)
        assert isinstance(sampler(spec, seed=1), expected[name])
    for name, cls in (("median", optuna.pruners.MedianPruner), ("hyperband", optuna.pruners.HyperbandPruner)):
        search = SearchSpec.model_validate({"space": {"lora.r": {"type": "int", "low": 8, "high": 16}},
                                            "n_trials": 2, "pruner": {"type": name, "report_every": 2}})
        assert isinstance(pruner(SweepSpec.model_construct(search=search), max_steps=10), cls)
        assert isinstance(search.pruner, PrunerSpec)


def test_optuna_dashboard_sees_named_studies_metric_names_and_what_each_trial_is(storage: str, plan) -> None:
    """What optuna-dashboard reads from the storage: a study name a person recognizes, the
    objectives' metric names (not "Objective 0"), the cell and seed on the study and its trials."""
    store = StudyStore(storage, plan.spec)
    planned = plan.studies()[0]
    store.tell(planned, store.ask(planned).number, "COMPLETE", [0.5])
    (summary,) = [s for s in optuna.get_all_study_summaries(storage) if s.study_name == planned.name]
    labels = list(planned.cell.labels.values())
    readable = [plan.spec.name, *labels, f"seed {planned.seed}", planned.cell.key]
    assert summary.study_name == " · ".join(readable)
    study = optuna.load_study(study_name=planned.name, storage=storage)
    assert study.metric_names == [o.metric for o in plan.spec.objectives]
    assert study.user_attrs["cell_labels"] == planned.cell.labels and study.user_attrs["seed"] == planned.seed
    assert study.user_attrs["settings"]
    (trial,) = study.trials
    assert trial.user_attrs["seed"] == planned.seed
    axes = {f"axis.{axis}": label for axis, label in planned.cell.labels.items()}
    assert axes.items() <= trial.user_attrs.items()


def test_a_sweep_created_with_hashed_study_names_keeps_them(storage: str, plan) -> None:
    planned = plan.studies()[0]
    old = optuna.create_study(study_name=planned.hashed_name, storage=storage)
    old.set_user_attr("cell", planned.cell.key)
    old.add_trial(optuna.trial.create_trial(value=1.0))
    store = StudyStore(storage, plan.spec)
    assert [r.state for r in store.trials(planned)] == ["COMPLETE"] and store.has_study(planned)
    assert planned.name not in store.existing_study_names()  # not created twice under the new name
