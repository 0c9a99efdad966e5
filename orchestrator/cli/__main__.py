"""``python -m qsweep.orchestrator.cli``: the ``qsweep`` command, without its console script."""

import sys

from qsweep.orchestrator.cli.main import main

sys.exit(main())
