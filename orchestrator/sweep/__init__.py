"""A sweep from spec to finished trials: ``spec`` (the schema), ``planning`` (cells and trials,
pure), ``sweep_dir`` (the sweep's directory), ``launch`` (checks before anything starts),
``driver`` (Optuna asks, Ray runs, MLflow records), ``estimate`` (GPU-hours before it runs) and
``usage`` (how busy it kept its GPUs)."""
