"""Thin adapters, each the one module of qsweep that imports its library: ``search`` (Optuna
studies, ask/tell), ``cluster`` (Ray tasks and the pruning broker), ``tracking`` (MLflow runs)."""
