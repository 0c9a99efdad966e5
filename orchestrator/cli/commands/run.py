"""``qsweep run SPEC`` and ``qsweep resume SWEEP``: run a sweep on Ray, resumable at any point.

``run`` plans the spec, checks the Optuna storage, the MLflow server and the evaluation tasks,
then starts (or joins, with ``--address``) a Ray cluster and runs every trial, showing live
progress. Running a spec whose sweep exists resumes it; ``resume`` does the same from the
sweep's own snapshot (``<root>/sweeps/<name>/spec.yaml``). Works as a Ray job too::

    ray job submit --address http://HEAD:8265 --working-dir . -- qsweep run sweeps/x.yaml --address auto
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from qsweep.orchestrator.cli.commands import (
    DEFAULT_ROOT,
    add_credentials_option,
    add_trust_flag,
    gate_remote_code,
    help_text,
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"runs root: sweep directories, local MLflow store (default {DEFAULT_ROOT})")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (host:port, or auto); default: start a local one")
    parser.add_argument("--num-gpus", type=int, default=None,
                        help="local cluster only: GPUs to declare (default: detected)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="local cluster only: CPUs to declare (default: detected)")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="trials at a time (default: the spec's, else what the cluster holds)")
    add_trust_flag(parser)
    add_credentials_option(parser)
    parser.add_argument("--retry-failed", action="store_true",
                        help="run the sweep's failed trials again, each continuing its MLflow run and "
                             "work directory (a new Optuna trial of the same parameters takes its place)")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("run", help="run a sweep on Ray (resumes it if it exists)",
                                 **help_text(__doc__))
    parser.add_argument("spec", help="sweep spec YAML (or the name of one in sweeps/, e.g. demo)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="spec overrides, e.g. seeds=[0] trial.train.max_steps=5")
    _common(parser)
    parser.set_defaults(handler=run)

    resume = commands.add_parser("resume", help="resume a sweep from its directory",
                                 description="Resume a sweep: finished trials stay, interrupted ones "
                                             "continue from their checkpoints.")
    resume.add_argument("sweep", help="sweep name (under --root) or sweep directory")
    _common(resume)
    resume.set_defaults(handler=run_resume)


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.sweep.planning import load_plan

    plan = load_plan(args.spec, args.overrides)
    gate_remote_code(plan, args)
    return _launch(plan, args)


def run_resume(args: argparse.Namespace) -> int:

    directory = sweep_directory(args.sweep, args.root)
    args.root = directory.path.parents[1]
    plan = directory.snapshot_plan()
    gate_remote_code(plan, args)
    return _launch(plan, args)


def sweep_directory(name_or_path: str, root: Path) -> Any:
    """The SweepDir of a sweep name under ``root``, or of a sweep directory path."""
    from qsweep.orchestrator.sweep.sweep_dir import SweepDir
    from qsweep.trainers.errors import UnknownSweep

    for directory in (SweepDir(Path(name_or_path)), SweepDir.of(root, name_or_path)):
        if directory.exists():
            return directory
    known = sorted(p.parent.name for p in (root / "sweeps").glob("*/sweep.json"))
    listing = f"; sweeps in {root}: {', '.join(known)}" if known else ""
    raise UnknownSweep(f"no sweep {name_or_path!r} (neither a sweep directory nor a sweep in "
                       f"{root / 'sweeps'}){listing}")


def _report(prepared: Any, root: Path) -> None:
    """The spec's report tables, printed and logged on the parent run, once the sweep ended."""
    from qsweep.orchestrator.cli.commands.report import publish

    name = prepared.plan.spec.name
    layouts = [report.layout() for report in prepared.plan.spec.reports]
    publish(prepared.tracking_uri, prepared.experiment, name, layouts, root / "reports" / name)


def local_cluster_environment(address: str | None) -> None:
    """A local cluster (no ``--address``, no ``RAY_ADDRESS``) listens on 127.0.0.1 only, with
    Ray's token authentication on.

    Ray binds its servers (GCS, raylet, workers, agents) to the node's address, and on Linux
    takes the machine's network address for it; its switch for a single-machine cluster,
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, makes the node address loopback. Token
    authentication is Ray's default; set explicitly (``RAY_AUTH_MODE=token``) Ray keeps it
    without printing a banner about it. Ray reads both when it is imported, so this runs before
    anything imports ray; values the user set are kept.
    """
    if not (address or os.environ.get("RAY_ADDRESS")):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def _launch(plan: Any, args: argparse.Namespace) -> int:
    """Run the sweep; a storage fault on the way (a full disk, a damaged or locked database) ends
    in one message that says what and how to resume (exit code 4)."""
    from qsweep.orchestrator.adapters.storage_faults import storage_fault
    from qsweep.trainers.errors import QsweepError

    try:
        return _run_sweep(plan, args)
    except QsweepError:
        raise
    except Exception as err:
        from qsweep.orchestrator.adapters.tracking import redact

        named = (plan.spec.storage.optuna, plan.spec.storage.tracking)
        stores = ", ".join(redact(url) for url in named if url)
        from qsweep.orchestrator.sweep.sweep_dir import SweepDir

        started = SweepDir.of(args.root, plan.spec.name).exists()
        again = f"qsweep resume {plan.spec.name}" if started else f"qsweep run {plan.source}"
        fault = storage_fault(err, args.root.resolve(), stores or f"the SQLite databases under {args.root}",
                              f"{again} --root {args.root}")
        if fault is None:
            raise
        raise fault from None


def _run_sweep(plan: Any, args: argparse.Namespace) -> int:
    local_cluster_environment(args.address)
    from filelock import FileLock, Timeout
    from qsweep.orchestrator.cli.console import (
        SweepProgress,
        console,
        print_error,
        sweep_summary,
        usage_lines,
    )
    from qsweep.orchestrator.sweep.launch import prepare_sweep
    from qsweep.orchestrator.trial.worker import execute
    from qsweep.trainers.errors import EXIT_FAILED, EXIT_OK
    from rich.markup import escape

    prepared = prepare_sweep(plan, args.root.resolve())
    directory = prepared.directory
    lock = FileLock(str(directory.lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print_error(f"another qsweep driver is running sweep {plan.spec.name!r} ({directory.path}); "
                    "wait for it or stop it first")
        return EXIT_FAILED
    try:
        driver = prepared.connect(args.address, args.num_gpus, args.num_cpus, args.concurrency, execute,
                                  retry_failed=args.retry_failed)
        console.print(f"[bold]qsweep run[/] {escape(plan.spec.name)}: {plan.total_trials} trials, "
                      f"{driver.concurrency} at a time on {prepared.placement}", highlight=False)
        if prepared.grown:
            console.print(f"the sweep grows by {prepared.grown}: its trials that ended are kept, the new "
                          "ones run", highlight=False)
        console.print(f"sweep directory {directory.path}\nOptuna {prepared.state.optuna}\n"
                      f"MLflow {prepared.state.tracking} (parent run {driver.parent.run_id})",
                      highlight=False)
        if driver.tally.ended or driver.tally.resumed or driver.tally.retried:
            resumed = driver.tally.resumed
            verb = "continues from its checkpoint" if resumed == 1 else "continue from their checkpoints"
            retried = f", {driver.tally.retried} failed run again" if driver.tally.retried else ""
            console.print(f"resuming: {driver.tally.ended} trials already ended, {resumed} interrupted "
                          f"{verb}{retried}", highlight=False)
        with SweepProgress(plan.total_trials, driver.concurrency, plan.spec.objectives[0].metric) as progress:
            driver.observe = progress
            progress(driver.tally)
            tally = driver.run()
        console.print(sweep_summary(prepared.status_rows(),
                                    objectives=[o.metric for o in prepared.plan.spec.objectives]))
        failed = tally.done.get("failed", 0) + tally.done.get("nan", 0)
        ended = ", ".join(f"{n} {status}" for status, n in sorted(tally.done.items()))
        console.print(f"{tally.ended} trials ended: {ended}. MLflow parent run {driver.parent.run_id}",
                      highlight=False)
        if tally.usage is not None:
            console.print(usage_lines(tally.usage), highlight=False)
        if plan.spec.reports:
            _report(prepared, args.root)
        return EXIT_OK if not failed else EXIT_FAILED
    except KeyboardInterrupt:
        print_error(f"interrupted; resume with: qsweep resume {plan.spec.name} --root {args.root}")
        raise
    finally:
        prepared.close()
        lock.release()
