"""``train.kernels``: auto where Liger's kernels apply, a clean fallback everywhere else."""

from __future__ import annotations

from pathlib import Path

from qsweep.trainers.loop import prepare, train


def test_kernels_auto_falls_back_on_a_cpu_and_trains(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config(train={"kernels": "auto", "max_steps": 2})
    setup = prepare(cfg)
    assert setup.qlora.kernels.startswith("none (") and "CUDA" in setup.qlora.kernels
    assert train(cfg, tmp_path).steps == 2
    off = tiny_config(train={"max_steps": 2})
    assert "kernels" not in off.identity()["train"] and cfg.identity()["train"]["kernels"] == "auto"
