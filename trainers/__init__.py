"""One QLoRA trial's training: typed config, data, quantized model, loop, checkpoints.

Entry points: ``qsweep.trainers.config_loading.load_config`` and ``qsweep.trainers.loop.train``.
Nothing here imports Ray, Optuna or MLflow.
"""
