"""One module per ``qsweep`` subcommand, each with ``add_parser`` and ``run``."""

from pathlib import Path

DEFAULT_ROOT = Path("qsweep-runs")
"""Where commands keep sweep directories, work directories and the local MLflow store."""
