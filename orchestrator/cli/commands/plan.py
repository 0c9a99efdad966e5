"""``qsweep plan SPEC [key=value ...]``: print a sweep's cells and trials; start nothing.

The spec is checked completely (every grid value, search range and objective against the
trial schema) — the same checks ``qsweep run`` makes before it touches Ray, Optuna or MLflow.
It ends with an estimate of the sweep's GPU-hours and peak memory per trial on one H100 80GB
(``qsweep.orchestrator.sweep.estimate``: a calibrated first-order model, ±25%).
"""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("plan", help="print a sweep's cells and trial count without running",
                                 description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="sweep spec YAML (or the name of one in sweeps/, e.g. demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="spec overrides, e.g. seeds=[0] trial.train.max_steps=5")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.cli.console import console, plan_table
    from qsweep.orchestrator.sweep.estimate import estimate_sweep
    from qsweep.orchestrator.sweep.planning import load_plan

    plan = load_plan(args.spec, args.overrides)
    console.print(plan_table(plan))
    spec = plan.spec
    per = f" x {spec.search.n_trials} Optuna trials ({spec.search.sampler})" if spec.search else ""
    console.print(f"{len(plan.cells)} cells x {len(spec.seeds)} seeds{per} = "
                  f"[bold]{plan.total_trials} trials[/]; objectives: "
                  + ", ".join(f"{o.direction} {o.metric}" for o in spec.objectives), highlight=False)
    console.print(describe_estimate(estimate_sweep(plan)), highlight=False)
    return 0


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
    return text
