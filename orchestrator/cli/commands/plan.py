"""``qsweep plan SPEC [key=value ...]``: print a sweep's cells and trials; start nothing.

The spec is checked completely (every grid value, search range and objective against the
trial schema) — the same checks ``qsweep run`` makes before it touches Ray, Optuna or MLflow.
It ends with an estimate of the sweep's GPU-hours and peak memory per trial on one H100 80GB
(``qsweep.orchestrator.sweep.estimate``: a calibrated first-order model, ±25%), and with the
smallest MMLU difference between two rows the sweep can resolve (``qsweep.evaluation.power``:
95% confidence, 80% power), from its questions and seeds and a share of differing answers
assumed, or measured on a finished pilot sweep (``--pilot NAME``). Examples::

    qsweep plan demo
    qsweep plan sweeps/paper-table4.yaml seeds=[0]
    qsweep plan sweeps/paper-table4.yaml --pilot demo
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qsweep.orchestrator.cli.commands import (
    DEFAULT_ROOT,
    add_credentials_option,
    add_trust_flag,
    gate_remote_code,
    help_text,
)


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("plan", help="print a sweep's cells and trial count without running",
                                 **help_text(__doc__))
    parser.add_argument("spec", help="sweep spec YAML (or the name of one in sweeps/, e.g. demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="spec overrides, e.g. seeds=[0] trial.train.max_steps=5")
    parser.add_argument("--pilot", metavar="NAME",
                        help="a finished sweep whose recorded answers give the share of questions two rows "
                             "answer differently (else assumed)")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help=f"runs root (default {DEFAULT_ROOT})")
    add_trust_flag(parser)
    add_credentials_option(parser)
    parser.add_argument("--tracking-uri", help="MLflow store of a pilot run elsewhere")
    parser.add_argument("--experiment", help="MLflow experiment of a pilot run elsewhere")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.cli.console import console, plan_table
    from qsweep.orchestrator.sweep.estimate import estimate_sweep
    from qsweep.orchestrator.sweep.planning import load_plan
    from qsweep.trainers.config import tolerating_missing_files
    from rich.markup import escape

    # a plan is shown even where its local data files are missing (each with a warning); the
    # configs that the estimates resolve again tolerate them too
    with tolerating_missing_files() as missing:
        plan = load_plan(args.spec, args.overrides)
        gate_remote_code(plan, args)
        console.print(plan_table(plan))
        for path in dict.fromkeys(missing):
            console.print(f"[yellow]warning:[/] data.path {escape(path)!r} does not exist here: qsweep run "
                          "refuses to start until it does", highlight=False)
        spec = plan.spec
        per = f" x {spec.search.n_trials} Optuna trials ({spec.search.sampler})" if spec.search else ""
        console.print(f"{len(plan.cells)} cells x {len(spec.seeds)} seeds{per} = "
                      f"[bold]{plan.total_trials} trials[/]; objectives: "
                      + ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives), highlight=False)
        console.print(describe_estimate(estimate_sweep(plan)), highlight=False)
        console.print(describe_resolution(plan, args), highlight=False)
    return 0


def describe_resolution(plan: Any, args: argparse.Namespace) -> str:
    """"resolution: detects an MMLU difference of ... points or more ..." (or why not)."""
    from qsweep.evaluation.power import minimum_detectable_difference
    from qsweep.orchestrator.sweep.estimate import mmlu_questions

    configs = [plan.trial_config(cell, plan.spec.seeds[0]) for cell in plan.cells]
    questions = min((mmlu_questions(config) for config in configs), default=0)
    if not questions:
        return "resolution: no MMLU task in the evaluation; nothing to state"
    seeds = len(plan.spec.seeds)
    if args.pilot:
        share = pilot_discordance(args, configs[0])
        resolution = minimum_detectable_difference(questions, seeds, share, source="measured on the pilot")
        return "resolution: " + resolution.describe()
    return "resolution: " + minimum_detectable_difference(questions, seeds).describe()


def pilot_discordance(args: argparse.Namespace, config: Any) -> float:
    """The share of (seed, question) pairs two rows of the pilot sweep answered differently."""
    from qsweep.orchestrator.adapters.tracking import check_reachable
    from qsweep.orchestrator.cli.commands.report import sweep_store
    from qsweep.orchestrator.report.reporting import discordance_of, read_sweep
    from qsweep.orchestrator.sweep.estimate import SUBJECTS
    from qsweep.trainers.errors import ReportError

    family = next(task for task in config.eval.tasks if task in SUBJECTS)
    metric = f"eval/{family}/acc"
    where = argparse.Namespace(root=args.root, sweep=args.pilot, tracking_uri=args.tracking_uri,
                               experiment=args.experiment)
    uri, experiment, _ = sweep_store(where)
    check_reachable(uri, "storage.tracking")
    share = discordance_of(read_sweep(uri, experiment, args.pilot, [metric]), metric)
    if share is None:
        raise ReportError(f"pilot sweep {args.pilot!r}: no two finished trials of one seed recorded the "
                          f"answers behind {metric} (eval/items.json.gz); run it with this qsweep")
    return share


def describe_estimate(estimate: Any) -> str:
    from qsweep.trainers.cost_model import KNOWN_SHAPES

    if estimate.unknown and estimate.gpu_hours == 0:
        return (f"no estimate: unknown shape of {', '.join(estimate.unknown)} (known: a local model "
                f"directory, or {', '.join(sorted(KNOWN_SHAPES))})")
    text = (f"estimate on one H100 80GB per trial: {estimate.gpu_hours:,.1f} GPU-hours in all, "
            f"peak memory up to {estimate.peak_gib:,.1f} GiB per trial")
    if estimate.peak_gib > 80:
        text += " — more than one 80 GB GPU holds: use larger GPUs, or checkpointing / a smaller micro-batch"
    if estimate.unknown:
        text += f" (not counted: {', '.join(estimate.unknown)}, shape unknown)"
    if estimate.fast_gpu_hours and estimate.fast_gpu_hours < 0.8 * estimate.gpu_hours:
        text += (f"\nwith train.packing, train.compile and train.micro_batch_size auto (the same examples "
                 f"per step; bench/README.md): about {estimate.fast_gpu_hours:,.1f} GPU-hours")
    return text
