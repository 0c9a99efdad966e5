r"""The ``qsweep`` command line.

Errors the user can act on are :class:`qsweep.trainers.errors.QsweepError`\ s: their message is
printed and their exit code returned (1 a runtime failure, 2 an invalid configuration; see
``qsweep.trainers.errors``); 0 success; 3 a trial that ended with a non-finite loss; 130 interrupted.

Commands: ``train`` (one trial's training), ``trial`` (train + evaluate + record in MLflow),
``plan`` / ``run`` / ``resume`` / ``status`` (sweeps on Ray), ``ui`` (the MLflow UI of the
local store), ``assets`` (offline model and data).
"""

from __future__ import annotations

import argparse
import logging
import os
import warnings

from qsweep.trainers.errors import EXIT_INTERRUPTED


def _quiet_libraries(verbose: bool = False) -> None:
    """Keep library chatter (progress bars, banners, optional-kernel notices) out of our output:
    qsweep draws one progress display per phase itself. ``-v`` lets the libraries speak. The
    environment reaches the trials' worker processes too."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "🏃 View run ..."
    if not verbose:
        os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's bars (a bar per subject), datasets'
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow resets its level on import
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # e.g. a warning per truncated prompt
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # "Creating initial MLflow database tables"
    logging.getLogger("optuna").setLevel(logging.WARNING)  # a line per study created and trial told
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("qsweep")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    from qsweep.orchestrator.cli.commands import assets, plan, report, run, status, train, trial, ui

    parser = argparse.ArgumentParser(
        prog="qsweep",
        description="QLoRA ablation sweeps: train, evaluate and record 4-bit fine-tuning trials.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    parser.add_argument("--version", action="version", version=f"qsweep {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (train, trial, plan, run, status, report, ui, assets):
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qsweep`` console script."""
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    from qsweep.orchestrator.cli.console import configure_logging, print_error

    configure_logging(verbose=args.verbose)
    from qsweep.trainers.errors import QsweepError

    try:
        if getattr(args, "credentials", None) is not None:
            from qsweep.orchestrator.adapters.credentials import load_credentials_file

            load_credentials_file(args.credentials)
        return args.handler(args)
    except QsweepError as err:
        print_error(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        print_error("interrupted")
        return EXIT_INTERRUPTED

