"""One module per ``qsweep`` subcommand, each with ``add_parser`` and ``run``."""

import argparse
import re
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("qsweep-runs")
"""Where commands keep sweep directories, work directories and the local MLflow store."""


def help_text(doc: str | None) -> dict[str, object]:
    """``add_parser`` keywords that show a command module's docstring as its ``--help`` text:
    plain text (reST's literal quotes, roles and ``::`` dropped), paragraphs and indented
    examples kept as written."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc or "").replace("``", "").replace("::\n", ":\n")
    return {"description": text.strip(), "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_credentials_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--credentials", type=Path, metavar="FILE",
                        help="a file of NAME=value lines (readable by you only) that sets QSWEEP_OPTUNA_URL, "
                             "QSWEEP_TRACKING_URL, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD or "
                             "MLFLOW_TRACKING_TOKEN for this command, instead of the environment")


def add_trust_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow a spec that sets model.trust_remote_code: true (runs code from the "
                             "model's repository in every trial); refused without it")


def gate_remote_code(plan: Any, args: argparse.Namespace) -> None:
    """Refuse a spec that turns trust_remote_code on without --trust-remote-code; with it, say so
    where nobody can miss it."""
    from qsweep.orchestrator.cli.console import errors
    from qsweep.orchestrator.sweep.planning import check_remote_code
    from rich.markup import escape

    keys = check_remote_code(plan, args.trust_remote_code)
    if keys:
        errors.print(f"[bold yellow]warning: trust_remote_code is on[/] ({escape(', '.join(keys))}): every "
                     "trial runs code from the model's repository", highlight=False)

