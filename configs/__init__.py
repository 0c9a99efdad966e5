"""Trial config presets (``configs/trial/<name>.yaml``), shipped as package data: a sweep spec's
``base: <name>`` names one of them (``qsweep.orchestrator.sweep.planning``)."""
