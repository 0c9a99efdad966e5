"""One module per ``qsweep`` subcommand, each with ``add_parser`` and ``run``."""
