"""``qsweep ui``: the MLflow UI for the local store, on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from qsweep.orchestrator.cli.commands import DEFAULT_ROOT, help_text


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("ui", help="start the MLflow UI for the local runs",
                                 **help_text(__doc__))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"runs root holding mlflow.db (default {DEFAULT_ROOT})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=5000)
    parser.set_defaults(handler=run)


def command(root: Path, host: str, port: int) -> list[str]:
    """The ``mlflow server`` command line that serves ``root``'s store and artifacts."""
    from qsweep.orchestrator.adapters.tracking import local_artifact_root

    uri = f"sqlite:///{(root / 'mlflow.db').resolve()}"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--default-artifact-root", local_artifact_root(uri), "--host", host,
            "--port", str(port), "--workers", "1"]


def run(args: argparse.Namespace) -> int:
    from qsweep.orchestrator.cli.console import console, print_error

    if not (args.root / "mlflow.db").is_file():
        print_error(f"no local MLflow store in {args.root}/ (run `qsweep trial CONFIG` first, "
                    "or pass --root)")
        return 1
    console.print(f"MLflow UI for {args.root.resolve()} at http://{args.host}:{args.port} "
                  "(Ctrl-C stops it)", highlight=False)
    console.print("qsweep's experiments open on their runs table (model training). An experiment made "
                  "by another tool may open in the GenAI view: switch it with the experiment type "
                  "toggle at the top of its page. Child runs are named by their cell and seed; "
                  "eval_base/* columns hold the untuned base, eval/* the tuned model; group the "
                  "table by a param axis.* to compare cells.", highlight=False)
    # The job runner serves MLflow's GenAI features (none used here) with 7 more processes.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    try:
        return subprocess.run(command(args.root, args.host, args.port), env=env,
                              check=False).returncode
    except KeyboardInterrupt:
        return 0
