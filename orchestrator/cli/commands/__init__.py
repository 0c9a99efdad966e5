"""One module per ``qsweep`` subcommand, each with ``add_parser`` and ``run``."""

import argparse
import re
from pathlib import Path

DEFAULT_ROOT = Path("qsweep-runs")
"""Where commands keep sweep directories, work directories and the local MLflow store."""


def help_text(doc: str | None) -> dict[str, object]:
    """``add_parser`` keywords that show a command module's docstring as its ``--help`` text:
    plain text (reST's literal quotes, roles and ``::`` dropped), paragraphs and indented
    examples kept as written."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc or "").replace("``", "").replace("::\n", ":\n")
    return {"description": text.strip(), "formatter_class": argparse.RawDescriptionHelpFormatter}
