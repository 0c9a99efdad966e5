"""Docs that are generated from code stay in step with it."""

from __future__ import annotations

from pathlib import Path

from trainers.config_reference import render

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_reference_matches_the_schema() -> None:
    documented = (ROOT / "docs" / "configuration.md").read_text()
    assert documented == render(), "run: python -m trainers.config_reference > docs/configuration.md"


def test_shipped_trial_configs_are_valid() -> None:
    from trainers.config_loading import load_trial_config

    for path in sorted((ROOT / "configs" / "trial").glob("*.yaml")):
        load_trial_config(path)
