"""Orchestration: the command line, sweep planning, Optuna search, Ray scheduling, MLflow."""
