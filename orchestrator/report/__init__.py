"""``qsweep report``: ``reporting`` reads a sweep's MLflow records and writes tables and plots,
``tables`` aggregates trial records into ablation tables with intervals, ``layouts`` says what a
table shows (the paper's presets included)."""
