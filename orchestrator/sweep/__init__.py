"""A sweep from spec to finished trials: ``spec`` (the schema), ``planning`` (cells and trials,
pure), ``sweep_dir`` (the sweep's directory), ``launch`` (checks before anything starts),
``driver`` (the scheduling loop: Optuna asks, Ray runs, MLflow records), ``ledger`` (the sweep's
MLflow runs), ``progress`` (the tally), ``estimate`` (GPU-hours before it runs) and
``usage`` (how busy it kept its GPUs)."""
