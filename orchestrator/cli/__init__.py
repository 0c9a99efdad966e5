"""The ``qsweep`` command line: ``main`` parses and dispatches, ``commands/`` holds one module per
subcommand, ``console`` all terminal output (rich), ``config_reference`` the generated docs."""
