"""The paper's specs run as they are: ``qsweep plan`` shows them (with a warning for a local data
file that is missing here), ``qsweep run`` refuses a missing file before anything starts, and
FLAN v2 has a hub recipe beside its local-file form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from qsweep.orchestrator.cli.main import main
from qsweep.trainers.config import DataConfig
from qsweep.trainers.data_recipes import FLAN_HUB, load_records
from qsweep.trainers.errors import HubUnavailable

ROOT = Path(__file__).resolve().parents[2]


def test_paper_table4_plans_here_with_a_warning_for_its_flan_file(tmp_path: Path, capsys,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # data/flan_v2.jsonl is relative: missing here
    assert main(["plan", str(ROOT / "sweeps" / "paper-table4.yaml")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "54 trials" in out
    assert "warning: data.path 'data/flan_v2.jsonl' does not exist here" in out
    assert "resolution: detects an MMLU difference of 0.5 points or more" in out


def test_run_refuses_the_missing_file_before_starting_anything(tmp_path: Path, capsys,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = yaml.safe_load((ROOT / "sweeps" / "demo.yaml").read_text())
    spec["grid"]["dataset"] = {"mine": {"data.path": "data/mine.jsonl"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "spec.yaml"), "--root", str(tmp_path / "runs")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "grid.dataset.mine.data.path: file 'data/mine.jsonl' does not exist" in err
    assert not (tmp_path / "runs" / "sweeps").exists()


def test_flan_v2_reads_the_hub_without_a_path_and_a_local_file_with_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"inputs": "Translate: chat", "targets": "cat"}, {"inputs": "2+2?", "targets": "4"}]
    local = tmp_path / "flan.jsonl"
    local.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(DataConfig(name="flan_v2", path=local))
    assert [(r["prompt"], r["response"]) for r in records] == [("Translate: chat", "cat"), ("2+2?", "4")]

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is unreachable
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(HubUnavailable, match=FLAN_HUB):
        load_records(DataConfig(name="flan_v2"))
