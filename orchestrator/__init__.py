"""Orchestration: everything between the command line and one trial's training and evaluation.

One folder per concern:

* ``cli/`` — the ``qsweep`` command line: one module per subcommand (``cli/commands/``), the
  terminal output (``console``), the config references rendered into ``docs/``;
* ``sweep/`` — a sweep from spec to finished trials: the spec schema, planning (cells, trials),
  the sweep directory, the checks before a sweep starts, the driver, cost estimates, GPU use;
* ``trial/`` — one trial: its config, ``run_trial`` (train, evaluate, record), the Ray worker
  that runs it in a sweep, GPU turns between trials sharing a GPU, the environment fingerprint;
* ``adapters/`` — the one module each that imports Optuna (``search``), Ray (``cluster``) and
  MLflow (``tracking``);
* ``report/`` — ablation tables and plots from a sweep's MLflow records, and their layouts.

Imports flow one way inside qsweep: ``orchestrator`` -> ``evaluation`` -> ``trainers``
(tests/test_imports.py).
"""
