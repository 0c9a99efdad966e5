"""Evaluation of trained trials (lm-eval integration, offline tasks, reports)."""
