"""Shared fixtures: a tiny random Llama, small datasets, config builders."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 64) with random weights and a byte-level tokenizer."""
    from trainers.random_model import write_random_llama

    return write_random_llama(tmp_path_factory.mktemp("models") / "tiny-llama", "tiny", seed=0)


@pytest.fixture(scope="session")
def repeated_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight prompt/response pairs: small enough to memorize in a few dozen steps."""
    rows = [{"prompt": f"Q: what is {i} plus {i}?", "response": f" A: {2 * i}."} for i in range(8)]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in base.items()}
    for section, values in extra.items():
        merged.setdefault(section, {}).update(values)
    return merged


@pytest.fixture
def tiny_config(tiny_model_dir: Path, repeated_data: Path) -> Callable[..., Any]:
    """Build a validated TrialConfig for the tiny model: ``tiny_config(quant={"type": "fp4"})``."""
    from trainers.config_loading import validate

    base = {
        "model": {"name": str(tiny_model_dir), "dtype": "fp32"},
        "quant": {"compute_dtype": "fp32"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "train": {"max_steps": 30, "micro_batch_size": 4, "grad_accum_steps": 2,
                  "learning_rate": 1e-2, "optimizer": "adamw", "checkpoint_every": 0,
                  "gradient_checkpointing": False, "device": "cpu"},
        "data": {"path": str(repeated_data)},
    }

    def build(**sections: dict[str, Any]) -> Any:
        return validate(_merge(base, sections))

    return build


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
