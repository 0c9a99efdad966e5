"""``qsweep train`` through the installed console script, on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

QSWEEP = str(Path(sys.executable).parent / "qsweep")


@pytest.fixture
def tiny_yaml(tmp_path: Path, tiny_trial):
    """``tiny_yaml(**train)``: an FP4+DQ trial file of 5 steps, ``train`` keys updated."""
    def write(**train) -> Path:
        raw = tiny_trial(quant={"type": "fp4", "double_quant": True}, lora={"r": 4},
                         train={"max_steps": 5, "grad_accum_steps": 1, "checkpoint_every": 2, **train})
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([QSWEEP, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          check=False)


def test_train_shows_progress_and_a_summary(tiny_yaml, tmp_path: Path) -> None:
    config = tiny_yaml()
    done = run("train", str(config), "lora.r=8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "FP4+DQ" in done.stdout and "LoRA r=8" in done.stdout
    assert "5/5" in done.stdout  # the progress bar reached the end
    assert "step 5/5 loss" in done.stdout  # and, without a terminal, printed plain lines
    for row in ("steps", "final loss", "tokens/s", "peak memory", "quantized layers", "adapter"):
        assert row in done.stdout

    (workdir,) = (tmp_path / "qsweep-runs" / "train").iterdir()
    assert workdir.name.startswith("tiny-")
    assert yaml.safe_load((workdir / "config.yaml").read_text())["lora"]["r"] == 8
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_s", "peak_memory_bytes"} <= set(metrics[0])
    result = json.loads((workdir / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 5
    assert (workdir / "adapter" / "adapter_model.safetensors").is_file()
    assert str(workdir / "adapter") in " ".join(done.stdout.split())

    again = run("train", str(config), "lora.r=8", cwd=tmp_path)
    assert again.returncode == 0 and "resumed at 5" in again.stdout


def test_nan_trial_exits_3_with_its_reason(tiny_yaml, tmp_path: Path) -> None:
    config = tiny_yaml(learning_rate=1e30, max_grad_norm=0, max_steps=10)
    done = run("train", str(config), cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "nan" in done.stdout and "became" in done.stdout
    assert "Traceback" not in done.stderr
