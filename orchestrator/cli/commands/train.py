"""``qsweep train CONFIG.yaml [key=value ...]``: train one trial with a progress bar.

The work directory (default ``qsweep-runs/train/<config>-<hash>``, named by the content hash
of the resolved config) receives ``config.yaml``, ``metrics.jsonl`` (one line per step),
``checkpoints/``, ``adapter/`` and ``result.json``. Running the same command again resumes
from the newest checkpoint. Examples::

    qsweep train configs/trial/smollm2-offline.yaml
    qsweep train configs/trial/smollm2-offline.yaml quant.type=fp4 train.max_steps=10
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from qsweep.orchestrator.cli.commands import DEFAULT_ROOT, help_text


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("train", help="train one trial from a YAML config",
                                 **help_text(__doc__))
    parser.add_argument("config", type=Path, help="trial config YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. lora.r=16 quant.type=fp4")
    parser.add_argument("--workdir", type=Path, default=None,
                        help=f"work directory (default: {DEFAULT_ROOT}/train/<config>-<hash>)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the work directory's checkpoints and start over")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.cli.console import TrainProgress, console, train_summary
    from qsweep.orchestrator.trial.config import load_trial_config
    from qsweep.trainers.errors import EXIT_NAN, EXIT_OK
    from qsweep.trainers.loop import fit, prepare
    from qsweep.trainers.status import TrialStatus
    from rich.markup import escape

    cfg = load_trial_config(args.config, args.overrides)
    default = DEFAULT_ROOT / "train" / f"{args.config.stem}-{cfg.content_hash()[:8]}"
    workdir = (args.workdir or default).resolve()
    if args.restart and (workdir / "checkpoints").exists():
        shutil.rmtree(workdir / "checkpoints")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    console.print(f"[bold]qsweep train[/] {escape(str(args.config))} -> {escape(str(workdir))}")
    console.print(f"model {cfg.model.name} | {cfg.quant.label} | LoRA r={cfg.lora.r} "
                  f"on {cfg.lora.target_modules} | data {cfg.data.name or cfg.data.path}")
    with console.status("loading data and model"):
        setup = prepare(cfg)
    metrics_file = workdir / "metrics.jsonl"
    with open(metrics_file, "a", encoding="utf-8") as sink, \
            TrainProgress(cfg.train.max_steps) as progress:
        def on_step(metrics: Any) -> None:
            sink.write(json.dumps(metrics.to_dict()) + "\n")
            sink.flush()
            progress(metrics)

        result = fit(setup, cfg, workdir, on_step)
    summary = {k: v for k, v in asdict(result).items() if k != "history"}
    (workdir / "result.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    console.print(train_summary(result))
    return EXIT_OK if result.status == TrialStatus.FINISHED else EXIT_NAN
