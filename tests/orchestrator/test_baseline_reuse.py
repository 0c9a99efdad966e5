"""The untuned base is evaluated once per cell: the seeds of a cell share its step-0 evaluation
(copied between sibling runs of a real MLflow server), a retry reads its own back, and a cell
with another data type evaluates its own."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from mlflow.tracking import MlflowClient
from qsweep.orchestrator.adapters.tracking import MlflowTracker
from qsweep.orchestrator.trial.baseline import KEY_TAG, SOURCE_TAG
from qsweep.orchestrator.trial.runner import run_trial

EXPERIMENT = "baseline-reuse"


def _items(client: MlflowClient, run_id: str, into: Path) -> dict:
    path = client.download_artifacts(run_id, "eval/baseline/items.json.gz", str(into))
    return json.loads(gzip.decompress(Path(path).read_bytes()))


def _step0(client: MlflowClient, run_id: str, metric: str) -> list[float]:
    return [m.value for m in client.get_metric_history(run_id, metric) if m.step == 0]


def test_seeds_of_a_cell_share_one_step0_evaluation(mlflow_server: str, tiny_config, tmp_path: Path) -> None:
    def config(seed: int, quant_type: str = "nf4"):
        return tiny_config(
            quant={"type": quant_type, "double_quant": True},
            train={"max_steps": 2, "grad_accum_steps": 1, "seed": seed},
            eval={"tasks": ["mmlu_offline", "perplexity_offline"], "limit": 1, "num_fewshot": 0,
                  "task_limits": {"perplexity_offline": 6}, "baseline": True},
            tracking={"uri": mlflow_server, "experiment": EXPERIMENT})

    client = MlflowClient(mlflow_server)
    parent = MlflowTracker.start(mlflow_server, EXPERIMENT, "sweep")

    def trial(cfg, name: str, parent_id: str | None = parent.run_id):
        tracker = MlflowTracker.start(mlflow_server, EXPERIMENT, name, parent_run_id=parent_id)
        return tracker, run_trial(cfg, tracker, tmp_path / name)

    first, first_result = trial(config(0), "seed0")
    assert "baseline_eval" in first_result.phases
    assert client.get_run(first.run_id).data.tags[KEY_TAG]

    second, second_result = trial(config(1), "seed1")
    tags, first_tags = client.get_run(second.run_id).data.tags, client.get_run(first.run_id).data.tags
    assert tags[SOURCE_TAG] == first.run_id and tags[KEY_TAG] == first_tags[KEY_TAG]
    assert "baseline_eval" not in second_result.phases  # copied, not evaluated
    assert second_result.baseline_metrics == first_result.baseline_metrics
    for metric in ("eval/perplexity", "eval/mmlu_offline/acc"):
        assert _step0(client, second.run_id, metric) == _step0(client, first.run_id, metric), metric
    assert _items(client, second.run_id, tmp_path / "a") == _items(client, first.run_id, tmp_path / "b")
    assert second_result.train.history != first_result.train.history  # the seed still trains differently

    # The premise, checked: evaluated on its own (no sweep to share with), seed 1's base gives
    # the very same numbers.
    alone, alone_result = trial(config(1), "alone", parent_id=None)
    assert "baseline_eval" in alone_result.phases and SOURCE_TAG not in client.get_run(alone.run_id).data.tags
    assert alone_result.baseline_metrics == first_result.baseline_metrics
    assert _items(client, alone.run_id, tmp_path / "c") == _items(client, first.run_id, tmp_path / "d")

    # Another data type is another base: evaluated, its own numbers.
    fp4, fp4_result = trial(config(0, "fp4"), "fp4")
    assert "baseline_eval" in fp4_result.phases and SOURCE_TAG not in client.get_run(fp4.run_id).data.tags
    assert fp4_result.baseline_metrics["eval/perplexity"] != first_result.baseline_metrics["eval/perplexity"]

    # A retry of the same run reads its own evaluation back and logs nothing twice.
    again = run_trial(config(1), MlflowTracker.attach(mlflow_server, second.run_id), tmp_path / "seed1")
    assert "baseline_eval" not in again.phases and again.baseline_metrics == first_result.baseline_metrics
    assert len(_step0(client, second.run_id, "eval/perplexity")) == 1
    # the untuned values under names of their own, beside the tuned ones (once, copied or not)
    for run in (first, second):
        base = _step0(client, run.run_id, "eval_base/perplexity")
        assert base == _step0(client, run.run_id, "eval/perplexity") and len(base) == 1
    assert len(client.get_metric_history(second.run_id, "eval_base/perplexity")) == 1
