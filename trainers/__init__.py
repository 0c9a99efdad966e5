"""One QLoRA trial's training: typed config, data, quantized model, loop, checkpoints.

Entry points: ``trainers.config_loading.load_config`` and ``trainers.loop.train``.
Nothing here imports Ray, Optuna or MLflow.
"""
