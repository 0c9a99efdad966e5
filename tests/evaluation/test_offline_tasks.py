"""The offline lm-eval tasks: their files, their data, and loading through lm-eval itself."""

from __future__ import annotations

from pathlib import Path

import lm_eval
import pytest
import yaml
from qsweep.evaluation import offline_data, task_files
from qsweep.evaluation.config import OFFLINE_DEV_PER_SUBJECT, EvalConfig
from qsweep.evaluation.harness import check_tasks, expand_tasks, stratified_samples, task_manager
from qsweep.evaluation.mmlu_categories import SUBJECT_CATEGORIES, subject_key
from qsweep.trainers.errors import SetupError
from qsweep.trainers.mmlu import TRAIN_SUBJECTS

LM_EVAL_MMLU = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"


def test_categories_are_lm_evals() -> None:
    tags = {}
    for path in LM_EVAL_MMLU.glob("mmlu_*.yaml"):
        config = yaml.safe_load(path.read_text())
        tags[config["dataset_name"]] = config["tag"].removeprefix("mmlu_").removesuffix("_tasks")
    assert tags == SUBJECT_CATEGORIES


def test_prompt_template_is_lm_evals_mmlu() -> None:
    ours = yaml.safe_load((task_files.MMLU_DIR / "_default_template_yaml").read_text()
                          .replace("!function ", ""))
    theirs = yaml.safe_load((LM_EVAL_MMLU / "_default_template_yaml").read_text())
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "output_type", "fewshot_config",
                "fewshot_split", "test_split", "metric_list"):
        assert ours[key] == theirs[key], key


def test_generated_task_files_are_up_to_date() -> None:
    on_disk = {p.name: p.read_text() for p in task_files.MMLU_DIR.iterdir() if p.is_file()}
    assert on_disk == task_files.files(), "run: python -m qsweep.evaluation.task_files"


def test_dev_and_test_are_disjoint_and_fixed() -> None:
    total_dev = total_test = total_left_out = 0
    for subject in SUBJECT_CATEGORIES:
        dev, test = offline_data.mmlu_split(subject)
        assert len(dev) == OFFLINE_DEV_PER_SUBJECT
        assert set(map(id, dev)).isdisjoint(map(id, test))
        # no evaluated question repeats a few-shot example of its prompt
        shown = {offline_data.normalized(q.question) for q in dev}
        assert not [q for q in test if offline_data.normalized(q.question) in shown]
        left_out = len(offline_data.questions_by_subject()[subject]) - len(dev) - len(test)
        total_dev, total_test = total_dev + len(dev), total_test + len(test)
        total_left_out += left_out
    # 5 questions repeat a few-shot example: college physics' helium question and machine
    # learning's Gaussian Bayes question word for word, 3 more by their question text
    assert (total_dev, total_test, total_left_out) == (285, 13_752, 5)
    assert offline_data.mmlu_split("anatomy") == offline_data.mmlu_split("anatomy")


def test_perplexity_text_is_in_no_training_set() -> None:
    documents = offline_data.perplexity_documents()
    assert len(documents) == 530
    trained = {subject_key(s) for s in TRAIN_SUBJECTS}
    assert not {d["subject"] for d in documents} & trained
    from qsweep.trainers.config import DataConfig
    from qsweep.trainers.data_recipes import load_records

    training_text = "\n".join(r["prompt"] for r in load_records(DataConfig(name="mmlu-heldout")))
    assert not any(d["text"] in training_text for d in documents)


def test_offline_tasks_load_through_lm_evals_task_manager() -> None:
    manager = task_manager(["mmlu_offline", "perplexity_offline"])
    assert isinstance(manager, lm_eval.tasks.TaskManager)
    assert {"mmlu_offline", "mmlu_offline_stem", "perplexity_offline"} <= set(manager.all_tasks)
    assert "hellaswag" not in manager.all_tasks  # offline tasks alone: lm-eval's index is not built
    loaded = manager.load(["mmlu_offline", "perplexity_offline"])
    assert len(loaded["tasks"]) == 58  # 57 subjects + perplexity
    anatomy = loaded["tasks"]["mmlu_offline_anatomy"]
    assert isinstance(anatomy, lm_eval.api.task.ConfigurableTask)
    _, test = offline_data.mmlu_split("anatomy")
    assert len(anatomy.eval_docs) == len(test)
    doc = anatomy.eval_docs[0]
    assert anatomy.doc_to_text(doc) == (f"{test[0].question.strip()}\nA. {test[0].choices[0]}\n"
                                        f"B. {test[0].choices[1]}\nC. {test[0].choices[2]}\n"
                                        f"D. {test[0].choices[3]}\nAnswer:")
    assert anatomy.config.description.startswith("The following are multiple choice questions")
    assert len(loaded["tasks"]["perplexity_offline"].eval_docs) == 530


def test_trained_subjects_are_left_out_of_mmlu_groups() -> None:
    trained = {subject_key(s) for s in TRAIN_SUBJECTS}
    tasks = expand_tasks(["mmlu_offline", "perplexity_offline"], trained)
    assert len(tasks) == 53 + 1 and tasks[-1] == "perplexity_offline"
    assert not {f"mmlu_offline_{s}" for s in trained} & set(tasks)
    assert expand_tasks(["mmlu_offline"], set()) == ["mmlu_offline"]


def test_unknown_task_names_are_reported_with_suggestions() -> None:
    expected = r"eval.tasks: lm-eval has no task or group 'mmlu_ofline'.*mmlu_offline"
    with pytest.raises(SetupError, match=expected):
        check_tasks(EvalConfig(tasks=["mmlu_ofline"]))


def test_stratified_samples_are_seeded_and_balanced() -> None:
    sizes = {"mmlu_offline_anatomy": 130, "mmlu_offline_virology": 3, "hellaswag": 1000}
    picked = stratified_samples(sizes, limit=5, seed=1)
    assert {t: len(v) for t, v in picked.items()} == {"mmlu_offline_anatomy": 5,
                                                      "mmlu_offline_virology": 3, "hellaswag": 5}
    assert picked == stratified_samples(sizes, limit=5, seed=1)
    assert picked != stratified_samples(sizes, limit=5, seed=2)
    assert all(max(v) < sizes[t] and v == sorted(set(v)) for t, v in picked.items())
    assert stratified_samples(sizes, limit=None, seed=1) is None  # nothing limited
    mixed = stratified_samples(sizes, {"mmlu_offline_anatomy": 2, "mmlu_offline_virology": 2,
                                       "hellaswag": None}, seed=1)
    assert [len(mixed[t]) for t in sizes] == [2, 2, 1000]


def test_task_limits_override_the_limit_per_task_and_mmlu_family() -> None:
    cfg = EvalConfig(tasks=["mmlu_offline", "perplexity_offline"], limit=2,
                     task_limits={"perplexity_offline": 200})
    assert cfg.limit_for("mmlu_offline_anatomy") == 2 and cfg.limit_for("perplexity_offline") == 200
    cfg = EvalConfig(tasks=["mmlu_offline", "hellaswag"], task_limits={"mmlu_offline": 5})
    assert cfg.limit_for("mmlu_offline_virology") == 5 and cfg.limit_for("hellaswag") is None
    with pytest.raises(ValueError, match="arc_easy not in eval.tasks"):
        EvalConfig(tasks=["mmlu"], task_limits={"arc_easy": 3})


def test_the_step0_evaluation_may_run_tasks_the_final_one_does_not() -> None:
    """Perplexity before the fine-tune, MMLU after it (the demo): limits may name either."""
    cfg = EvalConfig(tasks=["mmlu_offline"], baseline=True, baseline_tasks=["perplexity_offline"],
                     limit=1, task_limits={"perplexity_offline": 150})
    assert cfg.all_tasks == ["mmlu_offline", "perplexity_offline"]
    step0 = cfg.for_baseline()
    assert step0.tasks == ["perplexity_offline"] and step0.limit_for("perplexity_offline") == 150
    assert cfg.needs_hub == []
    assert EvalConfig(tasks=["mmlu_offline"], baseline_tasks=["piqa"]).needs_hub == ["piqa"]
    with pytest.raises(ValueError, match="arc_easy not in eval.tasks .* or eval.baseline_tasks"):
        EvalConfig(tasks=["mmlu"], baseline_tasks=["piqa"], task_limits={"arc_easy": 3})
    for bad in ([], ["piqa", "piqa"]):
        with pytest.raises(ValueError, match="baseline_tasks"):
            EvalConfig(tasks=["mmlu"], baseline_tasks=bad)


def test_an_unknown_step0_task_is_named_with_its_key() -> None:
    from qsweep.evaluation.harness import check_tasks
    from qsweep.trainers.errors import SetupError

    with pytest.raises(SetupError, match="eval.baseline_tasks.*perplexity_ofline.*perplexity_offline"):
        check_tasks(EvalConfig(tasks=["mmlu_offline"], baseline_tasks=["perplexity_ofline"]))


def test_offline_mmlu_subjects_and_categories_need_no_hub() -> None:
    from qsweep.evaluation.config import EvalConfig

    offline = EvalConfig(tasks=["mmlu_offline_anatomy", "mmlu_offline_stem", "perplexity_offline"])
    assert offline.needs_hub == []
    online = EvalConfig(tasks=["mmlu_anatomy", "hellaswag", "mmlu_offline_nosuchsubject"])
    assert online.needs_hub == ["mmlu_anatomy", "hellaswag", "mmlu_offline_nosuchsubject"]
