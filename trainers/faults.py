"""Test-only fault injection: real exceptions raised by the trainer on request.

``QSWEEP_FAULT_OOM="step=2,min_micro_batch=4"`` in a sweep worker's environment makes
:func:`oom_injector` return a hook that :func:`qsweep.trainers.loop.fit` calls before each optimizer
step (``before_step``); it raises a real ``torch.OutOfMemoryError`` before step 2 whenever the
micro-batch is at least 4 — so a sweep's retry with half the micro-batch gets past it, as it
would past a real out-of-memory error. Unset (always, outside tests), there is no hook and the
training loop checks nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

OOM_VARIABLE = "QSWEEP_FAULT_OOM"

StepHook = Callable[[int, int], None]
"""``hook(step, micro_batch_size)``, called before optimizer step ``step`` (1-based)."""


def oom_injector(environ: dict[str, str] | None = None) -> StepHook | None:
    """The out-of-memory hook that ``QSWEEP_FAULT_OOM`` asks for, or None (see module doc)."""
    raw = (os.environ if environ is None else environ).get(OOM_VARIABLE)
    if not raw:
        return None
    setting = {}
    for part in raw.split(","):
        key, _, value = part.partition("=")
        setting[key.strip()] = int(value)
    at_step, min_micro_batch = setting.get("step", 1), setting.get("min_micro_batch", 1)

    def raise_oom(step: int, micro_batch_size: int) -> None:
        if step == at_step and micro_batch_size >= min_micro_batch:
            raise torch.OutOfMemoryError(f"injected by {OOM_VARIABLE}: out of memory at step {step} "
                                         f"with micro-batch {micro_batch_size}")

    return raise_oom
