"""``qsweep report`` from a real MLflow store: golden tables, comparisons, plots, artifacts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from qsweep.orchestrator.adapters.tracking import MlflowTracker
from qsweep.orchestrator.cli.main import main
from scipy import stats

# (data type, model, dataset) -> per-seed (final accuracy, step-0 perplexity); FP4/7B/alpaca
# seed 2 failed.
RESULTS = {
    ("NF4+DQ", "7B", "alpaca"): [(0.390, 6.64), (0.402, 6.65), (0.385, 6.63)],
    ("NF4+DQ", "7B", "flan"): [(0.445, 6.64), (0.450, 6.65), (0.440, 6.63)],
    ("FP4", "7B", "alpaca"): [(0.372, 6.99), (0.380, 7.01), None],
    ("FP4", "7B", "flan"): [(0.440, 6.99), (0.436, 7.01), (0.444, 6.98)],
}


@pytest.fixture
def sweep_store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = MlflowTracker.start(uri, "reports", "golden",
                                 tags={"qsweep.role": "sweep", "qsweep.sweep": "golden"})
    parent.log_params({"sweep.seeds": [0, 1, 2], "sweep.grid": {
        "data_type": ["NF4+DQ", "FP4"], "model": ["7B"], "dataset": ["alpaca", "flan"]}})
    for (data_type, model, dataset), seeds in RESULTS.items():
        for seed, result in enumerate(seeds):
            tags = {"qsweep.role": "trial", "qsweep.seed": str(seed), "qsweep.axis.data_type": data_type,
                    "qsweep.axis.model": model, "qsweep.axis.dataset": dataset,
                    "qsweep.status": "finished" if result else "failed"}
            run = MlflowTracker.start(uri, "reports", f"{data_type} {seed}", tags=tags,
                                      parent_run_id=parent.run_id)
            if result:
                accuracy, perplexity = result
                run.log_metrics({"eval/perplexity": perplexity, "eval/mmlu/acc": 0.25}, step=0)
                peak = 2**30 * (5 if data_type == "FP4" else 4.8)
                run.log_metrics({"eval/perplexity": perplexity - 1, "eval/mmlu/acc": accuracy,
                                 "train/peak_memory_bytes": peak}, step=10)
            run.finish("FINISHED" if result else "FAILED")
    return uri


def expected_comparison() -> str:
    """NF4+DQ against FP4 over the (column, seed) pairs both finished, computed here with scipy."""
    pairs = [(RESULTS[("NF4+DQ", "7B", d)][s][0], RESULTS[("FP4", "7B", d)][s][0])
             for d in ("alpaca", "flan") for s in range(3) if RESULTS[("FP4", "7B", d)][s]]
    nf4, fp4 = zip(*pairs, strict=True)
    differences = np.subtract(nf4, fp4)
    half = stats.t.ppf(0.975, len(pairs) - 1) * stats.sem(differences)
    p = stats.ttest_rel(nf4, fp4).pvalue
    return (f"NF4+DQ - FP4: {differences.mean() * 100:.3f} ± {half * 100:.3f} over {len(pairs)} paired "
            f"(column, seed) results; paired t-test, p = {p:.3g}\n")


def report(uri: str, root: Path, *args: str) -> int:
    return main(["report", "golden", "--tracking-uri", uri, "--experiment", "reports", "--root", str(root),
                 *args])


def test_table4_from_mlflow_is_exact_and_logged_on_the_parent(sweep_store: str, tmp_path: Path,
                                                               capsys) -> None:
    assert report(sweep_store, tmp_path, "--preset", "table4") == 0
    out = tmp_path / "reports" / "golden"
    assert (out / "table4.md").read_text() == """\
**Table 4: MMLU accuracy after fine-tuning (%)** (eval/mmlu/acc; mean ± half the 95% t-interval over seeds, \
n = 2-3 seeds; Mean: over columns per seed, then a t-interval over seeds)

| data_type | 7B / trained on alpaca | 7B / trained on flan | Mean |
|---|---|---|---|
| NF4+DQ | 39.23 ± 2.17 | 44.50 ± 1.24 | 41.87 ± 1.70 |
| FP4 | 37.60 ± 5.08† | 44.00 ± 0.99 | — |

† FP4 / 7B / alpaca: n=2 of 3 seeds, 1 failed

""" + expected_comparison()
    assert (out / "table4.csv").read_text().splitlines()[1] == \
        "NF4+DQ,7B / alpaca,eval/mmlu/acc,0.392333,0.37063,0.414037,3,3,0,0,t-interval over seeds"
    assert "\\toprule" in (out / "table4.tex").read_text()
    for image in ("table4.png", "table4-memory.png"):
        assert (out / image).read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "39.23 ± 2.17" in printed and "paired t-test" in printed
    client = MlflowClient(sweep_store)
    parent = client.search_runs([client.get_experiment_by_name("reports").experiment_id],
                                "tags.`qsweep.role` = 'sweep'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/table4.md", "report/table4.tex", "report/table4.csv", "report/table4.png"} <= logged
    # the parent carries the answer: the tables as its description, each cell's mean as a metric
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["mlflow.note.content"] == "# golden\n\n" + (out / "table4.md").read_text()
    assert parent.data.metrics["report/table4/NF4_DQ/7B / alpaca"] == pytest.approx(39.2333, abs=1e-3)
    assert parent.data.metrics["report/table4/FP4/7B / flan"] == pytest.approx(44.00, abs=1e-2)


def test_table2_takes_the_step_0_values(sweep_store: str, tmp_path: Path) -> None:
    assert report(sweep_store, tmp_path, "--preset", "table2", "--no-log") == 0
    lines = (tmp_path / "reports" / "golden" / "table2.md").read_text().splitlines()
    # Step 0 (not the final 5.64), averaged over the datasets per seed; FP4's seed 2 lost one.
    assert lines[2:6] == ["| data_type | eval/perplexity@0 |", "|---|---|", "| NF4+DQ | 6.64 ± 0.02 |",
                          "| FP4 | 6.99 ± 0.04† |"]
    assert lines[7] == "† FP4 / all: n=3 of 3 seeds, 1 failed"


def test_a_layout_on_a_missing_axis_is_a_clear_error(sweep_store: str, tmp_path: Path, capsys) -> None:
    assert report(sweep_store, tmp_path, "--rows", "quant", "--metric", "eval/mmlu/acc") == 1
    assert "no grid axis 'quant'; its axes: data_type, model, dataset" in capsys.readouterr().err
    assert main(["report", "nowhere", "--root", str(tmp_path), "--preset", "table2"]) == 1


def test_a_metric_no_trial_logged_is_an_error_naming_those_they_did(sweep_store: str, tmp_path: Path,
                                                                       capsys) -> None:
    asked = ("--preset", "table4", "--metric", "eval/no_such_metric", "--no-log")
    assert report(sweep_store, tmp_path, *asked) == 1
    error = " ".join(capsys.readouterr().err.split())
    assert "no finished trial of sweep 'golden' logged eval/no_such_metric" in error
    assert "eval/mmlu/acc" in error  # what they logged
    assert not (tmp_path / "reports" / "golden" / "table4.md").exists()


# --- item level: a sweep whose trials recorded their questions and documents ---

QUESTIONS = 80
DOCUMENTS = 30


def item_scores(data_type: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed per-item data: 0/1 per question, log-likelihood and words per document."""
    rng = np.random.default_rng([7, seed])
    truth = rng.random(QUESTIONS) < 0.55
    correct = truth.copy()
    if data_type == "FP4":
        correct[:12] = False  # FP4 loses some questions NF4 gets right
    words = np.random.default_rng(1).integers(20, 60, DOCUMENTS).astype(float)
    loglikelihood = -words * (2.0 + (0.15 if data_type == "FP4" else 0.0)) - rng.random(DOCUMENTS)
    return correct.astype(float), loglikelihood, words


@pytest.fixture
def item_store(tmp_path: Path) -> str:
    from qsweep.evaluation.items import ItemRecords

    uri = f"sqlite:///{tmp_path / 'items.db'}"
    parent = MlflowTracker.start(uri, "items", "itemized",
                                 tags={"qsweep.role": "sweep", "qsweep.sweep": "itemized"})
    parent.log_params({"sweep.seeds": [0, 1], "sweep.grid": {"data_type": ["NF4", "FP4"]}})
    for data_type in ("NF4", "FP4"):
        for seed in (0, 1):
            correct, loglikelihood, words = item_scores(data_type, seed)
            tags = {"qsweep.role": "trial", "qsweep.seed": str(seed), "qsweep.axis.data_type": data_type,
                    "qsweep.status": "finished"}
            run = MlflowTracker.start(uri, "items", f"{data_type} {seed}", tags=tags,
                                      parent_run_id=parent.run_id)
            final, baseline = ItemRecords(), ItemRecords()
            final.questions.update(task=["mmlu_anatomy"] * QUESTIONS, doc_id=list(range(QUESTIONS)),
                                   doc_hash=[""] * QUESTIONS, correct=[int(c) for c in correct],
                                   chosen=[0] * QUESTIONS, answer=[0] * QUESTIONS)
            baseline.documents.update(task=["perplexity_offline"] * DOCUMENTS, doc_id=list(range(DOCUMENTS)),
                                      doc_hash=[""] * DOCUMENTS, loglikelihood=loglikelihood.tolist(),
                                      words=[int(w) for w in words], bytes=[0] * DOCUMENTS)
            for where, records in (("eval", final), ("eval/baseline", baseline)):
                directory = tmp_path / f"{data_type}{seed}" / where
                directory.mkdir(parents=True)
                run.log_artifact(records.write(directory), where)
            run.log_metrics({"eval/perplexity": float(np.exp(-loglikelihood.sum() / words.sum()))}, step=0)
            run.log_metrics({"eval/mmlu/acc": float(correct.mean())}, step=5)
            run.finish("FINISHED")
    return uri


def test_item_level_intervals_and_comparison_from_mlflow(item_store: str, tmp_path: Path) -> None:
    from qsweep.evaluation.statistics import PERPLEXITY, item_interval, paired_item_comparison

    args = ["report", "itemized", "--tracking-uri", item_store, "--experiment", "items",
            "--root", str(tmp_path), "--no-log", "--rows", "data_type", "--compare", "NF4", "FP4"]
    assert main([*args, "--metric", "eval/mmlu/acc", "--scale", "100", "--name", "acc"]) == 0
    assert main([*args, "--metric", "eval/perplexity@0", "--name", "ppl"]) == 0
    out = tmp_path / "reports" / "itemized"

    nf4 = np.array([item_scores("NF4", s)[0] for s in (0, 1)])
    fp4 = np.array([item_scores("FP4", s)[0] for s in (0, 1)])
    cell = item_interval(nf4)
    csv_line = (out / "acc.csv").read_text().splitlines()[1].split(",")
    assert csv_line[3:6] == [f"{cell.mean:.6g}", f"{cell.low:.6g}", f"{cell.high:.6g}"]
    assert csv_line[6:] == ["2", "2", "0", str(QUESTIONS), "bootstrap over seeds and items"]
    markdown = (out / "acc.md").read_text()
    assert f"n = {QUESTIONS} items x 2 seeds" in markdown
    assert f"| NF4 | {cell.mean * 100:.2f} [{cell.low * 100:.2f}, {cell.high * 100:.2f}] |" in markdown
    compared = paired_item_comparison(nf4, fp4)
    d = compared.difference
    assert (f"NF4 - FP4: {d.mean * 100:.3f} [95% interval {d.low * 100:.3f}, "
            f"{d.high * 100:.3f}]; difference over {QUESTIONS} items x 2 seeds; paired permutation test "
            "over items") in markdown
    assert compared.p_value < 0.01 and f"p = {compared.p_value:.3g}" in markdown
    assert "paired t-test" not in markdown  # 2 seeds: no seed-level test line

    # step-0 perplexity from the baseline's documents
    words = item_scores("NF4", 0)[2]
    ll = {t: np.array([item_scores(t, s)[1] for s in (0, 1)]) for t in ("NF4", "FP4")}
    ppl = (out / "ppl.md").read_text()
    compared = paired_item_comparison(ll["NF4"], ll["FP4"], words, PERPLEXITY)
    d = compared.difference
    assert d.high < 1 and compared.p_value < 0.01  # NF4's perplexity is lower: resolved
    assert (f"NF4 / FP4: {d.mean:.4f} [95% interval {d.low:.4f}, {d.high:.4f}]; ratio of corpus perplexities "
            f"over {DOCUMENTS} items x 2 seeds; paired permutation test over items") in ppl
    assert f"p = {compared.p_value:.3g}" in ppl
    cell = item_interval(ll["FP4"], words, PERPLEXITY)
    assert f"| FP4 | {cell.mean:.2f} [{cell.low:.2f}, {cell.high:.2f}] |" in ppl


def test_plan_states_the_resolvable_difference_assumed_or_from_a_pilot(item_store: str, tmp_path: Path,
                                                                        capsys) -> None:
    from qsweep.evaluation.power import ASSUMED_DISCORDANCE, discordance, minimum_detectable_difference

    assert main(["plan", "demo"]) == 0
    assumed = minimum_detectable_difference(53, 2, ASSUMED_DISCORDANCE)  # 53 subjects x 1 question
    out = " ".join(capsys.readouterr().out.split())
    assert f"resolution: detects an MMLU difference of {assumed.difference * 100:.1f} points or more" in out
    assert "53 questions x 2 seeds" in out and "assumed" in out

    assert main(["plan", "demo", "trial.eval.tasks=[mmlu]",
                 "objectives=[{metric: eval/mmlu/acc, direction: maximize}]", "--pilot", "itemized",
                 "--tracking-uri", item_store, "--experiment", "items", "--root", str(tmp_path)]) == 0
    share = np.mean([discordance([item_scores("NF4", s)[0]], [item_scores("FP4", s)[0]]) for s in (0, 1)])
    measured = minimum_detectable_difference(53, 2, share)  # the demo asks 1 question per subject
    out = " ".join(capsys.readouterr().out.split())
    assert f"detects an MMLU difference of {measured.difference * 100:.1f} points or more" in out
    assert f"{share * 100:.0f}% of answers differing between rows, measured on the pilot" in out
