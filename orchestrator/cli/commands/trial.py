"""``qsweep trial CONFIG.yaml [key=value ...]``: train, evaluate and record one trial in MLflow.

Before anything loads, the config is validated, the tracking store and the hub (for online
tasks) are checked and the lm-eval task names resolved: a mistake costs seconds, not an hour
of training. The trial's work directory is ``<root>/trials/<config>-<hash>``; the default
tracking store is ``<root>/mlflow.db`` (browse it with ``qsweep ui``). Examples::

    qsweep trial configs/trial/smollm2-offline.yaml
    qsweep trial configs/trial/smollm2-offline.yaml eval.baseline=true eval.limit=5
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qsweep.orchestrator.cli.commands import DEFAULT_ROOT, add_credentials_option, help_text


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("trial", help="train + evaluate + record one trial in MLflow",
                                 **help_text(__doc__))
    parser.add_argument("config", type=Path, help="trial config YAML")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. lora.r=16 eval.limit=5")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"runs root: work directories, local MLflow store (default {DEFAULT_ROOT})")
    add_credentials_option(parser)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="work directory (default: <root>/trials/<config>-<hash>)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qsweep.evaluation.harness import check_tasks
    from qsweep.orchestrator.adapters.tracking import MlflowTracker, check_reachable, redact, resolve_uri
    from qsweep.orchestrator.cli.console import TrainProgress, console, eval_table, phase_line, train_summary
    from qsweep.orchestrator.trial.config import load_trial_config
    from qsweep.orchestrator.trial.runner import run_trial
    from qsweep.trainers import hub
    from qsweep.trainers.errors import EXIT_NAN, EXIT_OK
    from qsweep.trainers.phases import PhaseClock, process_started
    from qsweep.trainers.status import TrialStatus
    from rich.markup import escape

    cfg = load_trial_config(args.config, args.overrides)
    root = args.root.resolve()
    trial_hash = cfg.content_hash()
    workdir = (args.workdir or root / "trials" / f"{args.config.stem}-{trial_hash[:8]}").resolve()
    uri = resolve_uri(cfg.tracking.uri, root)
    check_reachable(uri, "tracking.uri", str(args.config))
    if cfg.eval.tasks:
        check_tasks(cfg.eval)
    if cfg.eval.needs_hub:
        hub.require_hub(f"the data of lm-eval tasks {', '.join(cfg.eval.needs_hub)}",
                        offline_hint="Offline alternatives: eval.tasks=[mmlu_offline,perplexity_offline].")
    run_name = cfg.tracking.run_name or f"{args.config.stem}-{cfg.quant.label}-{trial_hash[:8]}"
    tracker = MlflowTracker.start(uri, cfg.tracking.experiment, run_name, root=root)
    console.print(f"[bold]qsweep trial[/] {escape(str(args.config))} -> {escape(str(workdir))}")
    console.print(f"MLflow run {tracker.run_id} in {redact(uri)}", highlight=False)
    status = TrialStatus.FAILED.mlflow_status
    try:
        with TrainProgress(cfg.train.max_steps) as progress:
            # The start phase runs from the process's start: imports and checks count too.
            result = run_trial(cfg, tracker, workdir, on_step=progress, on_eval=progress.evaluation,
                               phases=PhaseClock(started=process_started()))
        status = TrialStatus(result.status).mlflow_status
    except KeyboardInterrupt:
        status = TrialStatus.INTERRUPTED.mlflow_status
        raise
    finally:
        tracker.finish(status)
    if result.train is not None:
        console.print(train_summary(result.train))
    if result.metrics:
        console.print(eval_table(result.metrics, result.baseline_metrics))
    if result.phases:
        console.print(phase_line(result.phases), highlight=False)  # per phase: time/* on the run
    console.print(f"MLflow run id: {tracker.run_id}", highlight=False)
    if tracker.ui_url:
        console.print(f"MLflow UI: {tracker.ui_url}", highlight=False)
    else:
        console.print(f"MLflow UI: qsweep ui --root {args.root}  then open "
                      f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}",
                      highlight=False)
    return EXIT_OK if result.status == TrialStatus.FINISHED else EXIT_NAN
