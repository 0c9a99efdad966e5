"""A whole trial recorded in a real MLflow server, read back through MlflowClient."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from qsweep.orchestrator.adapters.tracking import MlflowTracker, TrackingUnavailable, check_reachable, redact
from qsweep.orchestrator.trial.runner import Pruning, run_trial
from qsweep.trainers.data_recipes import load_records
from qsweep.trainers.loop import records_sha256
from safetensors.torch import load_file

SECRET = "s3cret-pa55"


def with_credentials(uri: str) -> str:
    return uri.replace("http://", f"http://alice:{SECRET}@")


@pytest.fixture(scope="module")
def finished_trial(mlflow_server: str, tiny_trial, tmp_path_factory: pytest.TempPathFactory):
    """One tiny trial with baseline and final evaluation, recorded in the server."""
    from qsweep.orchestrator.trial.config import TrialConfig
    from qsweep.trainers.config_loading import validate

    cfg = validate(tiny_trial(
        quant={"type": "nf4", "double_quant": True},
        train={"max_steps": 6, "grad_accum_steps": 1, "checkpoint_every": 3},
        eval={"tasks": ["mmlu_offline", "perplexity_offline"], "limit": 1, "num_fewshot": 1,
              "baseline": True},
        tracking={"uri": with_credentials(mlflow_server), "experiment": "trial-test"},
    ), TrialConfig)
    tracker = MlflowTracker.start(cfg.tracking.uri, cfg.tracking.experiment, "tiny")
    workdir = tmp_path_factory.mktemp("trial")
    started = time.perf_counter()
    result = run_trial(cfg, tracker, workdir)
    wall_s = time.perf_counter() - started
    tracker.finish("FINISHED")
    return cfg, result, tracker, wall_s


def test_run_holds_params_tags_and_complete_metric_histories(finished_trial, mlflow_server) -> None:
    cfg, result, tracker, _ = finished_trial
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["qsweep.status"] == "finished"
    assert run.data.tags["qsweep.trial_hash"] == cfg.content_hash()
    assert run.data.tags["qsweep.data_type"] == "NF4+DQ"
    def encoded(value: object) -> str:  # lists and mappings as JSON (issue 10), the rest as text
        if isinstance(value, (list, tuple, dict)):
            return json.dumps(value)
        return "null" if value is None else str(value)

    assert cfg.train.packing == "auto"  # the default: what it chose on this machine is recorded
    expected = {k: encoded(v) for k, v in cfg.flat().items()}
    assert run.data.params == {**expected, "train.applied_packing": "False"}
    assert run.data.params["quant.type"] == "nf4" and run.data.params["lora.r"] == "8"

    losses = client.get_metric_history(tracker.run_id, "train/loss")
    assert [m.step for m in losses] == [1, 2, 3, 4, 5, 6]
    assert [m.value for m in losses] == [m.loss for m in result.train.history]
    for name in ("train/learning_rate", "train/grad_norm", "train/tokens_per_s", "train/peak_memory_bytes"):
        assert len(client.get_metric_history(tracker.run_id, name)) == 6, name

    accuracy = client.get_metric_history(tracker.run_id, "eval/mmlu_offline/acc")
    assert [m.step for m in sorted(accuracy, key=lambda m: m.step)] == [0, 6]
    by_step = {m.step: m.value for m in accuracy}
    assert by_step[0] == result.baseline_metrics["eval/mmlu_offline/acc"]
    assert by_step[6] == result.metrics["eval/mmlu_offline/acc"]
    for name in ("eval/mmlu_offline/stem/acc", "eval/mmlu_offline/acc_subject_mean", "eval/perplexity",
                 "eval/perplexity_offline/byte_perplexity", "model/bits_per_quantized_param"):
        assert name in run.data.metrics, name


def test_adapter_config_and_fingerprint_come_back_as_artifacts(finished_trial, mlflow_server,
                                                               tiny_model_dir, repeated_data,
                                                               tmp_path: Path) -> None:
    import peft
    from qsweep.trainers.model import bnb_config
    from transformers import AutoModelForCausalLM

    cfg, result, tracker, _ = finished_trial
    client = MlflowClient(mlflow_server)
    names = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"adapter", "config.yaml", "environment.json", "eval"} <= names

    adapter = Path(client.download_artifacts(tracker.run_id, "adapter", str(tmp_path)))
    local = load_file(str(result.train.adapter_dir / "adapter_model.safetensors"))
    remote = load_file(str(adapter / "adapter_model.safetensors"))
    assert local.keys() == remote.keys() and all(torch.equal(local[k], remote[k]) for k in local)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=bnb_config(cfg.quant),
                                                dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            untuned = model(input_ids=ids).logits
    assert not torch.allclose(tuned, untuned)

    config_file = client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path))
    config = yaml.safe_load(Path(config_file).read_text())
    assert config["lora"] == cfg.to_dict()["lora"] and config["eval"] == cfg.to_dict()["eval"]
    fingerprint = json.loads(Path(client.download_artifacts(
        tracker.run_id, "environment.json", str(tmp_path))).read_text())
    assert fingerprint["packages"]["torch"] == torch.__version__
    assert {"python", "cuda", "driver", "gpus", "project_commit"} <= set(fingerprint)
    assert fingerprint["packages"]["bitsandbytes"] and fingerprint["packages"]["lm_eval"]
    assert fingerprint["data_sha256"] == records_sha256(load_records(cfg.data))
    results = json.loads(Path(client.download_artifacts(tracker.run_id, "eval/results.json",
                                                        str(tmp_path))).read_text())
    assert "perplexity_offline" in results["results"]
    # per-item records of both evaluations, for item-level statistics in reports
    from qsweep.evaluation.items import ItemRecords

    for where, step in (("eval", cfg.train.max_steps), ("eval/baseline", 0)):
        items = ItemRecords.read(Path(client.download_artifacts(tracker.run_id, f"{where}/items.json.gz",
                                                                str(tmp_path / where))))
        questions = items.for_metric("eval/mmlu_offline/acc")
        history = client.get_metric_history(tracker.run_id, "eval/mmlu_offline/acc")
        logged = [m.value for m in history if m.step == step]
        if logged:  # the baseline evaluates perplexity only unless told otherwise
            assert sum(questions.values) / len(questions.values) == pytest.approx(logged[-1])
        documents = items.for_metric("eval/perplexity_offline/word_perplexity")
        assert documents is not None and len(documents.ids) >= 1


def test_phase_timings_are_recorded_in_mlflow_and_result_json(finished_trial, mlflow_server) -> None:
    from qsweep.trainers.phases import COMPUTE_PHASES, PHASES

    _, result, tracker, wall_s = finished_trial
    phases = result.phases
    assert {"start", "load", "baseline_eval", "train", "eval", "record"} <= set(phases)
    assert all(phases[name] > 0 for name in ("load", "baseline_eval", "train", "eval", "record"))
    assert {"load/targets", "load/tokenizer", "load/data", "load/weights", "load/kbit_prep",
            "load/lora"} <= set(phases)
    parts = sum(phases[f"load/{part}"] for part in ("targets", "tokenizer", "data", "weights", "lora"))
    assert parts <= phases["load"] + 0.005  # parts of the load phase (each rounded to the millisecond)
    assert phases["total"] == pytest.approx(sum(phases[n] for n in PHASES if n in phases), abs=0.01)
    assert phases["compute"] == pytest.approx(sum(phases[n] for n in COMPUTE_PHASES if n in phases), abs=0.01)
    # The phases account for the trial's whole wall time, not only the parts that were timed.
    assert phases["total"] == pytest.approx(wall_s, rel=0.1)

    metrics = MlflowClient(mlflow_server).get_run(tracker.run_id).data.metrics
    for name, seconds in phases.items():
        assert metrics[f"time/{name}_s"] == pytest.approx(seconds), name
    on_disk = json.loads((result.workdir / "result.json").read_text())
    assert on_disk["status"] == "finished" and on_disk["run_id"] == tracker.run_id
    assert on_disk["phases"] == phases and on_disk["train"]["steps"] == 6
    assert on_disk["metrics"]["eval/perplexity"] == result.metrics["eval/perplexity"]


def test_each_intermediate_evaluation_is_timed(mlflow_server, tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(train={"max_steps": 6}, eval={"tasks": ["perplexity_offline"], "limit": 4})
    tracker = MlflowTracker.start(mlflow_server, "trial-test", "intermediate")
    reports: list[tuple[int, float]] = []
    pruning = Pruning(report_every=2, metric="eval/perplexity",
                      report=lambda step, value: reports.append((step, value)) is not None)
    result = run_trial(cfg, tracker, tmp_path / "trial", pruning=pruning)
    tracker.finish("FINISHED")
    assert result.status == "finished" and [step for step, _ in reports] == [2, 4]
    history = MlflowClient(mlflow_server).get_metric_history(tracker.run_id, "time/pruning_eval_s")
    assert sorted(m.step for m in history) == [2, 4] and all(m.value > 0 for m in history)
    assert result.phases["intermediate_eval"] == pytest.approx(sum(m.value for m in history), abs=0.01)
    on_disk = json.loads((tmp_path / "trial" / "result.json").read_text())
    assert [e["step"] for e in on_disk["intermediate_evals"]] == [2, 4]
    assert [e["seconds"] for e in on_disk["intermediate_evals"]] == \
        pytest.approx([m.value for m in sorted(history, key=lambda m: m.step)], abs=1e-3)


def test_credentials_are_never_recorded(finished_trial, mlflow_server, tmp_path: Path) -> None:
    _, result, tracker, _ = finished_trial
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    recorded = json.dumps([run.data.params, run.data.tags])
    for name in ("config.yaml", "environment.json"):
        recorded += Path(client.download_artifacts(tracker.run_id, name, str(tmp_path))).read_text()
    assert SECRET not in recorded
    assert "alice:***" not in recorded and "***@127.0.0.1" in recorded  # the URI, masked


def test_redact_masks_users_passwords_and_secret_query_values() -> None:
    assert redact("http://bob:hunter2@host:5000/x") == "http://***@host:5000/x"
    assert redact("postgresql://u:p@db/mlflow?sslmode=require&token=abc") == \
        "postgresql://***@db/mlflow?sslmode=require&token=***"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_unreachable_server_is_one_clear_error(closed_port: int) -> None:
    with pytest.raises(TrackingUnavailable, match="cannot reach the MLflow tracking server") as caught:
        check_reachable(f"http://carol:{SECRET}@127.0.0.1:{closed_port}")
    assert SECRET not in str(caught.value)


def test_cli_stops_before_training_when_the_server_is_down(tiny_model_dir, repeated_data, closed_port,
                                                          tmp_path: Path) -> None:
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": str(tiny_model_dir)}, "data": {"path": str(repeated_data)},
        "train": {"device": "cpu"}, "eval": {"tasks": ["perplexity_offline"]},
        "tracking": {"uri": f"http://dave:{SECRET}@127.0.0.1:{closed_port}"}}))
    done = subprocess.run([sys.executable, "-m", "qsweep.orchestrator.cli", "trial", str(config),
                           f"--root={tmp_path / 'runs'}"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"}, check=False)
    assert done.returncode == 4
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the MLflow tracking server" in errors[0]
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs" / "trials").exists()


def test_a_failing_trial_is_recorded_with_its_traceback(mlflow_server, tiny_config, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "p", "response": "r"}\n{not json\n')
    cfg = tiny_config(data={"path": str(broken)}, eval={"tasks": []})
    tracker = MlflowTracker.start(mlflow_server, "trial-test", "broken")
    with pytest.raises(Exception, match="not valid JSON"):
        run_trial(cfg, tracker, tmp_path / "trial")
    tracker.finish("FAILED")
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.data.tags["qsweep.status"] == "failed"
    assert "not valid JSON" in run.data.tags["qsweep.reason"]
    trace = Path(client.download_artifacts(tracker.run_id, "traceback.txt", str(tmp_path))).read_text()
    assert "DataError" in trace
    # Where its time went is kept too: it failed while loading its data.
    assert run.data.metrics["time/load_s"] > 0 and "time/train_s" not in run.data.metrics
    on_disk = json.loads((tmp_path / "trial" / "result.json").read_text())
    assert on_disk["status"] == "failed" and "not valid JSON" in on_disk["reason"]
    assert "load/data" in on_disk["phases"]  # the part it failed in


def test_a_nan_trial_is_tagged_nan(mlflow_server, tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(train={"max_steps": 8, "learning_rate": 1e30, "max_grad_norm": 0},
                      eval={"tasks": ["perplexity_offline"]})
    tracker = MlflowTracker.start(mlflow_server, "trial-test", "nan")
    result = run_trial(cfg, tracker, tmp_path / "trial")
    tracker.finish("FAILED")
    assert result.status == "nan" and not result.metrics
    tags = MlflowClient(mlflow_server).get_run(tracker.run_id).data.tags
    assert tags["qsweep.status"] == "nan" and "became" in tags["qsweep.reason"]



def test_a_database_tracking_store_keeps_artifacts_under_the_runs_root(postgres_url, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """MLflow on a database server (here the local PostgreSQL) would write artifacts to ./mlruns of
    whatever directory the command ran in; qsweep's experiments keep them under the runs root."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    run = MlflowTracker.start(postgres_url, "db-store", "artifacts", root=root)
    note = tmp_path / "note.txt"
    note.write_text("kept under the root")
    run.log_artifact(note, "notes")
    run.finish("FINISHED")
    assert list((root / "mlartifacts").rglob("notes/note.txt"))
    assert not (tmp_path / "mlruns").exists()


def test_an_mlflow_outage_longer_than_the_client_retries_loses_no_step(
        tiny_config, tmp_path: Path, monkeypatch, restartable_mlflow) -> None:
    """The tracking server is stopped for half the training, longer than its client's retries
    (here none); training goes on, and every step's metrics reach MLflow once it is back. A
    second outage outlasts the trial: the trial ends unrecorded, its step metrics wait in its
    journal, and the same trial run again (once the server is back) sends them — every step
    logged exactly once."""

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    server, uri = restartable_mlflow, restartable_mlflow.uri

    def outage(down_at: int, back_at: int | None):
        def on_step(metrics) -> None:
            if metrics.step == down_at:
                server.stop()
            if metrics.step == back_at:
                server.start()
        return on_step

    cfg = tiny_config(train={"max_steps": 30, "checkpoint_every": 10}, eval={"tasks": []},
                      tracking={"uri": uri})
    tracker = MlflowTracker.start(uri, "outage", "outage")
    result = run_trial(cfg, tracker, tmp_path / "work", on_step=outage(5, 20))
    assert result.status == "finished"
    client = MlflowClient(uri)
    logged = [m.step for m in client.get_metric_history(tracker.run_id, "train/loss")]
    assert sorted(logged) == list(range(1, 31))

    monkeypatch.setenv("QSWEEP_METRICS_WAIT_S", "2")
    again = MlflowTracker.start(uri, "outage", "outlasting")
    with pytest.raises(Exception, match="did not take the trial's step metrics"):
        run_trial(cfg, again, tmp_path / "work-2", on_step=outage(5, None))
    server.start()
    assert (tmp_path / "work-2" / "train_metrics.jsonl").is_file()
    resumed = run_trial(cfg, MlflowTracker.attach(uri, again.run_id), tmp_path / "work-2")
    assert resumed.status == "finished"
    assert sorted(m.step for m in client.get_metric_history(again.run_id, "train/loss")) == list(range(1, 31))


def test_the_metric_journal_sends_only_what_mlflow_lacks_of_this_config(tmp_path: Path) -> None:
    from qsweep.orchestrator.trial.metric_sender import MetricSender

    class Recorder:
        def __init__(self) -> None:
            self.logged: list[tuple[int, dict]] = []

        def log_metrics(self, metrics: dict, step: int) -> None:
            self.logged.append((step, metrics))

    first = MetricSender(Recorder(), tmp_path, "config-a")
    for step in (1, 2, 3):
        first.send({"train/loss": float(step)}, step)
    assert first.flush(10)
    first.close()
    other = MetricSender(Recorder(), tmp_path, "config-b")  # an OOM retry's smaller micro-batch
    other.send({"train/loss": 9.0}, 1)
    other.flush(10)
    other.close()
    again = Recorder()
    resumed = MetricSender(again, tmp_path, "config-a")
    assert resumed.backfill({"train/loss": 1}) == 3  # MLflow had step 1
    assert resumed.flush(10)
    resumed.close()
    assert again.logged == [(2, {"train/loss": 2.0}), (3, {"train/loss": 3.0})]


def test_runs_that_log_one_dataset_at_the_same_moment_all_record_it(mlflow_server) -> None:
    """Trials of a sweep that resume together log the same dataset into one experiment at once;
    the server's check-then-insert lets only one of them create it (the others broke its unique
    key, and failed the trial, before a second call linked the existing one)."""
    client = MlflowClient(mlflow_server)
    for attempt in range(3):  # the race is likelier on a fresh experiment: three of them
        experiment, digest = f"dataset-race-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex * 2
        trackers = [MlflowTracker.start(mlflow_server, experiment, f"run {i}") for i in range(8)]
        assert not log_dataset_at_once(trackers, digest), attempt
        for tracker in trackers:
            inputs = client.get_run(tracker.run_id).inputs.dataset_inputs
            assert [d.dataset.digest for d in inputs] == [digest[:36]]


def log_dataset_at_once(trackers: list[MlflowTracker], digest: str) -> list[str]:
    """Each tracker logs the dataset of ``digest`` in a thread of its own, all released at
    once; the errors."""
    import threading

    ready, failures = threading.Barrier(len(trackers)), []

    def log(tracker: MlflowTracker) -> None:
        ready.wait()
        try:
            tracker.log_dataset("mmlu-heldout", "qsweep://mmlu-heldout", digest)
        except Exception as err:  # noqa: BLE001 - collected for the caller
            failures.append(f"{type(err).__name__}: {str(err)[:200]}")

    threads = [threading.Thread(target=log, args=(tracker,)) for tracker in trackers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures
