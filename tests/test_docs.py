"""Docs that are generated from code stay in step with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from qsweep.orchestrator.cli.config_reference import RENDERED

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_references_match_the_schemas(name: str) -> None:
    documented = (ROOT / "docs" / name).read_text()
    assert documented == RENDERED[name](), "run: python -m qsweep.orchestrator.cli.config_reference"


def test_shipped_trial_configs_are_valid() -> None:
    from qsweep.orchestrator.trial.config import load_trial_config

    for path in sorted((ROOT / "configs" / "trial").glob("*.yaml")):
        load_trial_config(path)
