"""Entry points for the task YAML beside this file (lm-eval loads it by path)."""

from qsweep.evaluation.offline_data import mmlu_subject_dataset  # noqa: F401
