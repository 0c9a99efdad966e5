"""Checkpoint and resume: a resumed run continues with exactly the losses of an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from qsweep.trainers.checkpoint import latest_checkpoint, read_state
from qsweep.trainers.loop import ResumeMismatch, train

# Dropout and paged AdamW make the RNG and the bitsandbytes optimizer state part of what a
# checkpoint must restore; micro-batches of 3 over 8 examples cross epoch boundaries mid-step.
RESUMABLE = {
    "lora": {"dropout": 0.1},
    "train": {"max_steps": 8, "micro_batch_size": 3, "grad_accum_steps": 2,
              "optimizer": "paged_adamw_32bit", "checkpoint_every": 3, "keep_checkpoints": 2,
              "lr_schedule": "cosine", "warmup_ratio": 0.25},
}


class Crash(Exception):
    pass


def crash_at(step: int):
    def on_step(metrics) -> None:
        if metrics.step == step:
            raise Crash(f"killed at step {step}")
    return on_step


def test_resume_repeats_the_uninterrupted_losses(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(**RESUMABLE)
    reference = train(cfg, tmp_path / "uninterrupted")
    losses = [m.loss for m in reference.history]

    with pytest.raises(Crash):
        train(cfg, tmp_path / "interrupted", crash_at(5))
    latest = latest_checkpoint(tmp_path / "interrupted")
    assert latest.name == "step-000003" and read_state(latest).step == 3

    resumed = train(cfg, tmp_path / "interrupted")
    assert resumed.resumed_from_step == 3
    assert [m.step for m in resumed.history] == [4, 5, 6, 7, 8]
    assert [m.loss for m in resumed.history] == losses[3:]
    assert [m.learning_rate for m in resumed.history] == [m.learning_rate for m in reference.history[3:]]
    assert resumed.steps == 8 and resumed.final_loss == reference.final_loss


def test_checkpoints_hold_every_part_and_old_ones_are_pruned(tiny_config, tmp_path: Path) -> None:
    train(tiny_config(**RESUMABLE), tmp_path)
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step-000006", "step-000008"]  # every 3 steps and the last; 2 kept
    files = {p.name for p in (tmp_path / "checkpoints" / "step-000006").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt", "scheduler.pt",
            "rng.pt", "trainer_state.json", "manifest.json"} <= files
    manifest = json.loads((tmp_path / "checkpoints" / "step-000006" / "manifest.json").read_text())
    assert set(manifest) == files - {"manifest.json"}
    assert all(entry["bytes"] > 0 and len(entry["sha256"]) == 64 for entry in manifest.values())
    final = {p.name for p in (tmp_path / "checkpoints" / "step-000008").iterdir()}
    assert final == files - {"optimizer.pt", "scheduler.pt"}  # nothing left to train
    state = read_state(tmp_path / "checkpoints" / "step-000008")
    assert state.step == 8 and state.position == 16


def test_a_finished_run_resumes_to_nothing_new(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(**RESUMABLE)
    first = train(cfg, tmp_path)
    again = train(cfg, tmp_path)
    assert again.history == [] and again.steps == 8 and again.final_loss == first.final_loss


def test_resume_refuses_a_different_config(tiny_config, tmp_path: Path) -> None:
    with pytest.raises(Crash):
        train(tiny_config(**RESUMABLE), tmp_path, crash_at(4))
    changed = tiny_config(lora={"r": 4}, train=RESUMABLE["train"])
    with pytest.raises(ResumeMismatch, match=r"lora.r: 8 -> 4"):
        train(changed, tmp_path)


def test_cli_run_killed_with_sigkill_resumes_with_the_same_losses(
        tiny_trial, tiny_config, tmp_path: Path) -> None:
    raw = tiny_trial(lora={"dropout": 0.1},
                     train={"max_steps": 150, "micro_batch_size": 3, "checkpoint_every": 5})
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump(raw))
    workdir = tmp_path / "run"
    command = [sys.executable, "-m", "qsweep.orchestrator.cli", "train", str(config), f"--workdir={workdir}"]
    env = {**os.environ, "COLUMNS": "120"}

    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 300
    while latest_checkpoint(workdir) is None and victim.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, victim.stderr.read()
    killed_at = read_state(latest_checkpoint(workdir)).step
    assert killed_at < 150

    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert f"resumed at {killed_at}" in done.stdout

    by_step: dict[int, float] = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record["loss"]  # steps redone after the kill: last wins
    reference = train(tiny_config(**{k: raw[k] for k in ("lora", "train")}), tmp_path / "ref")
    assert [by_step[s] for s in range(1, 151)] == [m.loss for m in reference.history]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # the same size: only the checksum tells
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "file", "said"), [
    (truncate, "adapter_model.safetensors", "adapter_model.safetensors has"),
    (flip_a_bit, "optimizer.pt", "optimizer.pt does not match its checksum"),
    (flip_a_bit, "trainer_state.json", "trainer_state.json does not match its checksum"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tiny_config, tmp_path: Path, damage,
                                                                  file: str, said: str) -> None:
    cfg = tiny_config(**RESUMABLE)
    reference = train(cfg, tmp_path / "uninterrupted")
    workdir = tmp_path / "interrupted"
    with pytest.raises(Crash):
        train(cfg, workdir, crash_at(7))
    damage(workdir / "checkpoints" / "step-000006" / file)
    resumed = train(cfg, workdir)
    assert resumed.resumed_from_step == 3
    (problem,) = resumed.damaged_checkpoints
    assert problem.startswith("step-000006: ") and said in problem
    assert [m.loss for m in resumed.history] == [m.loss for m in reference.history[3:]]
    assert (workdir / "checkpoints" / "damaged-step-000006").is_dir()  # set aside, not tried again
    assert train(cfg, workdir).damaged_checkpoints == []


def test_with_no_intact_checkpoint_the_run_starts_over_from_step_0(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(**RESUMABLE)
    reference = train(cfg, tmp_path / "uninterrupted")
    workdir = tmp_path / "interrupted"
    with pytest.raises(Crash):
        train(cfg, workdir, crash_at(7))
    truncate(workdir / "checkpoints" / "step-000006" / "adapter_model.safetensors")
    (workdir / "checkpoints" / "step-000003" / "manifest.json").unlink()  # written before manifests
    truncate(workdir / "checkpoints" / "step-000003" / "rng.pt")  # found when read
    resumed = train(cfg, workdir)
    assert resumed.resumed_from_step == 0 and len(resumed.damaged_checkpoints) == 2
    assert "step-000003: unreadable" in resumed.damaged_checkpoints[1]
    assert [m.loss for m in resumed.history] == [m.loss for m in reference.history]
