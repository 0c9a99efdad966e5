"""Sweep specs shipped with qsweep, as package data: ``qsweep run demo`` finds ``demo.yaml`` here
(``qsweep.orchestrator.sweep.planning``). README.md says what each one reproduces."""
