"""One trial: ``config`` (the trial config: trainer sections plus ``eval`` and ``tracking``),
``runner`` (``run_trial``: train, evaluate, record), ``worker`` (what a sweep's Ray task runs),
``gpu_turns`` (trials sharing a GPU take turns) and ``fingerprint`` (the environment it ran in)."""
