"""Malformed and hostile sweep specs: each is refused by `plan` and by `run` with exit code 2,
one message naming the key at fault, no traceback, and nothing created — before anything
expensive starts. Every top-level key of a spec and every trial section is covered; so are YAML
itself, terminal markup in values, remote code and names that would escape the runs root.
(Bounds on size — a million-cell grid, an alias bomb — and unreadable files are in
test_errors.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from qsweep.orchestrator.cli.main import main

PREFIX = "name: hostile\nbase: smollm2-offline\n"
SPACE = "space: {lora.r: {type: int, low: 8, high: 16}}"
LOSS = "{metric: train/final_loss, direction: minimize}"
CASES = [
    ('name-path', 'name: ../escape\n',
     'name:'),
    ('name-empty', "name: ''\n",
     'name:'),
    ('name-list', 'name: [a, b]\n',
     'name:'),
    ('name-newline', 'name: "a\\nb"\n',
     'name:'),
    ('name-too-long', 'name: ' + 'x' * 300 + '\n',
     'name:'),
    ('unknown-top-key', 'grdi: {lora.r: [8]}\n',
     'grdi:'),
    ('lora-r-zero', 'trial: {lora: {r: 0}}\n',
     'trial.lora.r:'),
    ('lora-r-text', 'trial: {lora: {r: sixteen}}\n',
     'trial.lora.r:'),
    ('lora-targets-number', 'trial: {lora: {target_modules: 42}}\n',
     'trial.lora.target_modules:'),
    ('lora-dropout', 'trial: {lora: {dropout: 1.5}}\n',
     'trial.lora.dropout:'),
    ('quant-bits', 'trial: {quant: {bits: 3}}\n',
     'trial.quant.bits:'),
    ('quant-type', 'trial: {quant: {type: nf5}}\n',
     'trial.quant.type:'),
    ('quant-compute', 'trial: {quant: {compute_dtype: fp8}}\n',
     'trial.quant.compute_dtype:'),
    ('model-name-empty', "trial: {model: {name: ''}}\n",
     'trial.model.name:'),
    ('model-dtype', 'trial: {model: {dtype: int4}}\n',
     'trial.model.dtype:'),
    ('train-lr', 'trial: {train: {learning_rate: -1}}\n',
     'trial.train.learning_rate:'),
    ('train-steps', 'trial: {train: {max_steps: 0}}\n',
     'trial.train.max_steps:'),
    ('train-micro', 'trial: {train: {micro_batch_size: huge}}\n',
     'trial.train.micro_batch_size:'),
    ('train-optimizer', 'trial: {train: {optimizer: sgd}}\n',
     'trial.train.optimizer:'),
    ('train-device', 'trial: {train: {device: tpu}}\n',
     'trial.train.device:'),
    ('train-schedule', 'trial: {train: {lr_schedule: exotic}}\n',
     'trial.train.lr_schedule:'),
    ('data-name', 'trial: {data: {name: no-such-dataset}}\n',
     'trial.data.name:'),
    ('eval-limit', 'trial: {eval: {limit: -3}}\n',
     'trial.eval.limit:'),
    ('tracking-scheme', "trial: {tracking: {uri: 'gopher://x/y'}}\n",
     'trial.tracking.uri:'),
    ('trial-unknown-section', 'trial: {optimiser: {lr: 1}}\n',
     'trial.optimiser:'),
    ('trial-not-mapping', 'trial: [1, 2]\n',
     'trial:'),
    ('grid-empty-values', 'grid: {lora.r: []}\n',
     'grid.lora.r:'),
    ('grid-duplicate', 'grid: {lora.r: [8, 8]}\n',
     'grid.lora.r:'),
    ('grid-bad-key', "grid: {'no key': [1]}\n",
     'grid.no key:'),
    ('grid-bad-value', 'grid: {lora.r: [0]}\n',
     'grid.lora.r[0]:'),
    ('grid-named-bad', 'grid: {data_type: {NF4: {quant.type: nf9}}}\n',
     'grid.data_type.NF4.quant.type:'),
    ('grid-unknown-key', 'grid: {lora.rank: [8, 16]}\n',
     'grid.lora.rank'),
    ('seeds-empty', 'seeds: []\n',
     'seeds:'),
    ('seeds-twice', 'seeds: [1, 1]\n',
     'seeds:'),
    ('seeds-negative', 'seeds: [-1]\n',
     'seeds:'),
    ('seeds-text', 'seeds: zero\n',
     'seeds:'),
    ('max-trials-zero', 'max_trials: 0\n',
     'max_trials:'),
    ('search-zero-trials', 'search: {n_trials: 0, ' + SPACE + '}\n',
     'search.n_trials:'),
    ('search-range-inverted', 'search: {n_trials: 2, space: {lora.r: {type: int, low: 16, high: 8}}}\n',
     'search.space.lora.r'),
    ('search-sampler', 'search: {n_trials: 2, sampler: annealing, ' + SPACE + '}\n',
     'search.sampler:'),
    ('search-pruner', 'search: {n_trials: 2, pruner: {type: guillotine}, ' + SPACE + '}\n',
     'search.pruner'),
    ('objectives-empty', 'objectives: []\n',
     'objectives:'),
    ('objective-direction', 'objectives: [{metric: train/final_loss, direction: sideways}]\n',
     'objectives[0].direction:'),
    ('objective-twice', 'objectives: [' + LOSS + ', ' + LOSS + ']\n',
     'objectives:'),
    ('resources-gpus', 'resources: {gpus: -1}\n',
     'resources.gpus:'),
    ('resources-cpus', 'resources: {cpus: 0}\n',
     'resources.cpus:'),
    ('concurrency-zero', 'concurrency: 0\n',
     'concurrency:'),
    ('retries-negative', 'retries: -1\n',
     'retries:'),
    ('storage-optuna-scheme', "storage: {optuna: 'redis://x:6379/0'}\n",
     'storage.optuna:'),
    ('storage-tracking-port', "storage: {tracking: 'http://h:99999'}\n",
     'storage.tracking:'),
    ('reports-preset', 'reports: [{preset: table99}]\n',
     'reports[0]'),
    ('yaml-syntax', 'name: [unclosed\n',
     'yaml'),
    ('yaml-list-top', '- a\n- b\n',
     'mapping'),
    ('base-unknown', 'base: no-such-preset\n',
     "base: 'no-such-preset' is neither a preset"),
    ('duplicate-key', 'trial: {lora: {r: 8}}\ntrial: {lora: {r: 16}}\n',
     "key 'trial' appears twice"),
    ('grid-not-mapping', 'grid: [lora.r, 8]\n',
     'grid:'),
    ('search-space-unknown-key', 'search: {n_trials: 2, space: {lora.rank: {type: int, low: 8, high: 16}}}\n',
     'search.space.lora.rank'),
    ('search-enqueue-outside', 'search: {n_trials: 2, ' + SPACE + ', enqueue: [{lora.r: 64}]}\n',
     'search.enqueue'),
    ('objective-unknown-metric', 'objectives: [{metric: eval/nothing/acc, direction: maximize}]\n',
     'objectives[0].metric'),
    ('grid-and-search-same-key', 'grid: {lora.r: [8, 16]}\nsearch: {n_trials: 2, ' + SPACE + '}\n',
     'lora.r'),
    ('oom-retries-negative', 'oom_retries: -2\n',
     'oom_retries:'),
    ('trust-remote-code', 'trial: {model: {trust_remote_code: true}}\n',
     'trial.model.trust_remote_code: true runs code'),
    ('markup-in-value', "grid: {lora.r: ['[/bold]', '[red]8']}\n",
     '[/bold]'),
]


def spec_text(name: str, text: str) -> str:
    """The case's YAML: whole when it is about the YAML itself, else with a valid name and base
    beside the case's keys."""
    if name.startswith("yaml"):
        return text
    if text.startswith("name:"):
        return text + "base: smollm2-offline\n"
    if text.startswith("base:"):
        return "name: hostile\n" + text
    return PREFIX + text


def test_the_suite_covers_every_key_of_a_spec() -> None:
    from qsweep.orchestrator.sweep.spec import SweepSpec

    covered = {text.split(":")[0].strip("- {") for _, text, _ in CASES}
    assert len(CASES) >= 40
    assert set(SweepSpec.model_fields) <= covered | {"name", "base"}, set(SweepSpec.model_fields) - covered
    trial_sections = {text.split("{")[1].split(":")[0] for _, text, _ in CASES if text.startswith("trial: {")}
    assert {"model", "quant", "lora", "train", "data", "eval", "tracking"} <= trial_sections


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[case[0] for case in CASES])
def test_a_hostile_spec_is_refused_before_anything_starts(tmp_path: Path, capsys, name: str, text: str,
                                                         expected: str) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(spec_text(name, text))
    root = tmp_path / "runs"
    for command in ("plan", "run"):
        assert main([command, str(path), "--root", str(root)]) == 2, command
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith("error:") and expected in err, (command, err)
        assert "Traceback" not in err and "MarkupError" not in err
    assert not root.exists()  # nothing created
