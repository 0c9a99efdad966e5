"""One error vocabulary: every error a user can act on is a QsweepError whose exit code the
command line returns, in one place, with its message and no traceback."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

import pytest
import qsweep.orchestrator.cli.commands.plan as plan_command
import sqlalchemy
import yaml
from qsweep.orchestrator.adapters.storage_faults import fault_kind, storage_fault
from qsweep.orchestrator.cli.main import main
from qsweep.trainers import errors
from qsweep.trainers.errors import (
    AssetError,
    ConfigError,
    DataError,
    HubUnavailable,
    QsweepError,
    ReportError,
    ResumeMismatch,
    SetupError,
    StorageFault,
    StorageUnavailable,
    TrackingUnavailable,
)


@pytest.mark.parametrize(("error", "code"), [
    (ConfigError([("trial.lora.r", "must be > 0")], "sweep.yaml"), 2),
    (SetupError("lora.target_modules", "no linear layer named 'qkv'"), 2),
    (ResumeMismatch("the checkpoint was written by another config"), 2),
    (DataError("data.path: no such file"), 1),
    (AssetError("mmlu: checksum mismatch"), 1),
    (HubUnavailable("offline and not cached"), 1),
    (TrackingUnavailable("cannot reach http://127.0.0.1:1"), 4),
    (StorageUnavailable("cannot use the Optuna storage"), 4),
    (StorageFault("the disk of /x is full"), 4),
    (ReportError("no finished trial"), 1),
])
def test_the_command_line_ends_each_error_with_its_exit_code_and_message(
        monkeypatch, capsys, error: QsweepError, code: int) -> None:
    def fail(args) -> int:
        raise error

    monkeypatch.setattr(plan_command, "run", fail)
    assert main(["plan", "whatever.yaml"]) == code
    err = capsys.readouterr().err
    assert str(error).splitlines()[0] in err and "Traceback" not in err


def test_every_error_class_is_a_qsweep_error_with_an_exit_code() -> None:
    classes = [value for value in vars(errors).values()
               if isinstance(value, type) and issubclass(value, Exception)]
    assert len(classes) >= 11
    for cls in classes:
        assert issubclass(cls, QsweepError)
        assert cls.exit_code in (errors.EXIT_FAILED, errors.EXIT_CONFIG, errors.EXIT_STORAGE)


def test_a_bug_is_not_swallowed(monkeypatch) -> None:
    def fail(args) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(plan_command, "run", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["plan", "whatever.yaml"])


def test_version_names_the_installed_package(capsys) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"qsweep {importlib.metadata.version('qsweep')}"


@pytest.mark.parametrize("command", ["train", "trial", "plan", "run", "resume", "status", "report", "ui",
                                     "assets"])
def test_help_is_plain_text(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":class:" not in text and "::" not in text
    if command in ("train", "trial", "plan", "status", "report"):
        assert f"    qsweep {command}" in text  # its examples, as written
    if command == "report":
        assert "<root>/reports/<sweep>/" in text and "report/" in text  # what it writes, where


@pytest.mark.parametrize(("content", "expected"), [
    (b"name: x\ngrid: {lora.r: [8, 16]}\n\xff\xfe\n", "not UTF-8 text (byte 32"),
    (b"", "the file is empty"),
    (b"# only a comment\n", "the file is empty"),
    (b"name: x\ngrid: {lora.r: [[/bold]]\n", "invalid YAML"),
])
def test_unreadable_specs_are_one_clear_message(tmp_path, capsys, content: bytes, expected: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(content)
    assert main(["plan", str(spec)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "Traceback" not in err


def test_a_directory_is_not_a_spec(tmp_path, capsys) -> None:
    assert main(["plan", str(tmp_path)]) == 2
    assert "is a directory; give a YAML file" in capsys.readouterr().err


def test_what_the_user_wrote_is_never_read_as_markup(tmp_path, capsys) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nbase: smollm2-offline\ngrid: {lora.r: ['[/bold]', '[red]8']}\n")
    assert main(["plan", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "[/bold]" in err and "MarkupError" not in err and "Traceback" not in err


def test_a_grid_of_a_million_cells_is_refused_at_once_with_its_count(tmp_path, capsys) -> None:
    keys = ("lora.r", "lora.alpha", "train.max_steps", "train.learning_rate", "data.limit", "eval.limit")
    axes = {key: list(range(1, 11)) for key in keys}
    spec = tmp_path / "huge.yaml"
    spec.write_text(yaml.safe_dump({"name": "huge", "base": "smollm2-offline", "grid": axes,
                                    "seeds": [0, 1]}))
    assert main(["plan", str(spec)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("grid: 1,000,000 cells x 2 seeds x 1 trials = 2,000,000 trials, more than max_trials "
            "(10,000)") in err
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({"name": "small", "base": "smollm2-offline", "grid": {"lora.r": [8, 16]},
                                     "seeds": [0, 1], "max_trials": 3}))
    assert main(["plan", str(small)]) == 2
    assert "seeds: 2 cells x 2 seeds x 1 trials = 4 trials" in " ".join(capsys.readouterr().err.split())


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys) -> None:
    levels = ["a0: &a0 [8, 16]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
                                     f"*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    spec = tmp_path / "bomb.yaml"
    anchors = "\n".join(f"  {line}" for line in levels)
    spec.write_text(f"name: bomb\nbase: smollm2-offline\nanchors:\n{anchors}\ngrid: {{lora.r: *a9}}\n")
    assert main(["plan", str(spec)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "values (aliases counted each time they are used), more than the 100,000" in err


@pytest.mark.parametrize(("override", "expected"), [
    ("storage.tracking=gopher://host/x", "storage.tracking: must start with one of http://"),
    ("storage.optuna=postgresql://qsweep:secret@db:99999/optuna", "storage.optuna: has an invalid port"),
    ("storage.tracking=http://user:secret@host:port/", "storage.tracking: has an invalid port"),
    ("storage.tracking=http://user:secret@:5000/", "storage.tracking: names no host"),
    ("storage.optuna=postgresql://u:secret@bad_host!/x", "storage.optuna: has an invalid host 'bad_host!'"),
    ("trial.tracking.uri=https://u:secret@exa mple.com/", "trial.tracking.uri: has an invalid host"),
])
def test_storage_urls_are_checked_in_plan_with_their_key(capsys, override: str, expected: str) -> None:
    assert main(["plan", "demo", override]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert expected in err and "secret" not in err  # a password is never repeated


@pytest.mark.parametrize(("spec", "key"), [
    ({"trial": {"model": {"trust_remote_code": True}}}, "trial.model.trust_remote_code"),
    ({"grid": {"model.trust_remote_code": [False, True]}}, "grid.model.trust_remote_code[1]"),
    ({"grid": {"remote": {"yes": {"model.trust_remote_code": True, "lora.r": 8}}}},
     "grid.remote.yes.model.trust_remote_code"),
])
def test_trust_remote_code_in_a_spec_needs_the_command_line_flag(tmp_path, capsys, spec: dict,
                                                                  key: str) -> None:
    path = tmp_path / "remote.yaml"
    path.write_text(yaml.safe_dump({"name": "remote", "base": "smollm2-offline", **spec}))
    for command in (["plan"], ["run"]):
        assert main([*command, str(path), "--root", str(tmp_path / "runs")]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"{key}: true runs code from the model's repository" in err and "--trust-remote-code" in err
    assert not (tmp_path / "runs").exists()  # refused before anything was created
    assert main(["plan", str(path), "--trust-remote-code"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: trust_remote_code is on ({key})" in err
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"name": "plain", "base": "smollm2-offline"}))
    assert main(["plan", str(plain)]) == 0 and "trust_remote_code" not in capsys.readouterr().err


def test_a_model_directory_without_safetensors_is_one_clear_error(tmp_path, capsys, tiny_model_dir) -> None:
    import shutil

    model = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, model)
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": str(model)}, "data": {"name": "mmlu-heldout"},
                                      "train": {"max_steps": 1, "device": "cpu"}}))
    assert main(["train", str(config), "--workdir", str(tmp_path / "work")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"model.name: {model} holds only pytorch_model.bin, and qsweep loads weights from" in err
    assert "Traceback" not in err


def test_the_words_of_each_fault_are_recognized() -> None:
    full = sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database or disk is full"))
    assert fault_kind(RuntimeError("An exception is raised during the commit")) is None
    try:
        try:
            raise full
        except sqlalchemy.exc.OperationalError as err:
            raise RuntimeError("storage internal error") from err
    except RuntimeError as wrapped:
        assert fault_kind(wrapped) == "full"
    assert fault_kind(OSError(errno.ENOSPC, "No space left on device")) == "full"
    assert fault_kind(OSError(errno.EROFS, "Read-only file system")) == "read-only"
    assert fault_kind(sqlite3.DatabaseError("database disk image is malformed")) == "damaged"
    assert fault_kind(sqlite3.OperationalError("database is locked")) == "locked"
    refused = ("API request to http://127.0.0.1:1/api/2.0/mlflow/runs/create failed with exception "
               "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: ... [Errno 111] "
               "Connection refused")
    assert fault_kind(RuntimeError(refused)) == "unreachable"  # the driver's MLflow writes, mid-sweep
    store_failed = ("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-metric failed with "
                    "exception HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with "
                    "url: /api/2.0/mlflow/runs/log-metric (Caused by ResponseError('too many 503 error "
                    "responses'))")
    assert fault_kind(RuntimeError(store_failed)) == "server"  # the server's own database or disk
    said = str(storage_fault(RuntimeError(store_failed), Path("/runs"), "MLflow at http://127.0.0.1:5000",
                             "qsweep resume s --root /runs"))
    assert said.startswith("the MLflow server at http://127.0.0.1:5000 answered HTTP 503 to "
                           "/api/2.0/mlflow/runs/log-metric: it could not store what was sent")
    assert fault_kind(ValueError("not valid JSON")) is None


def test_a_damaged_spec_snapshot_is_named_as_such(tmp_path, capsys) -> None:
    from qsweep.orchestrator.sweep.planning import load_plan
    from qsweep.orchestrator.sweep.sweep_dir import SweepDir

    spec = tmp_path / "snap.yaml"
    spec.write_text(yaml.safe_dump({"name": "snap", "base": "smollm2-offline"}))
    directory = SweepDir.of(tmp_path / "runs", "snap")
    directory.create(load_plan(spec))
    snapshot = yaml.safe_load(directory.spec_file.read_text())
    snapshot["trial"]["eval"] = 5  # damaged, or edited by hand
    directory.spec_file.write_text(yaml.safe_dump(snapshot))
    for command in (["status", "snap"], ["resume", "snap"]):
        assert main([*command, "--root", str(tmp_path / "runs")]) == 2
        err = " ".join(capsys.readouterr().err.split())
        said = f"the sweep directory's spec snapshot {directory.spec_file} is damaged (trial.eval: must be"
        assert said in err and "qsweep run SPEC" in err


def test_a_credentials_file_sets_only_credentials_and_only_when_private(tmp_path, monkeypatch,
                                                                       capsys) -> None:
    from qsweep.orchestrator.adapters.credentials import load_credentials_file

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "from-the-environment")
    good = tmp_path / "good.env"
    good.write_text("# the team's MLflow\nMLFLOW_TRACKING_USERNAME=alice\nMLFLOW_TRACKING_PASSWORD='p w#1'\n")
    good.chmod(0o600)
    assert load_credentials_file(good) == ["MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_USERNAME"]
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "p w#1"
    typo = tmp_path / "typo.env"
    typo.write_text("MLFLOW_TRACKING_PASSWROD=x\n")
    typo.chmod(0o600)
    with pytest.raises(errors.ConfigError, match="MLFLOW_TRACKING_PASSWROD: not a credential qsweep reads"):
        load_credentials_file(typo)
    assert main(["status", "--credentials", str(tmp_path / "missing.env"), "--root", str(tmp_path)]) == 2
    assert "--credentials: cannot read" in capsys.readouterr().err
