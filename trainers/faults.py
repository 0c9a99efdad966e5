"""Test-only fault injection: real exceptions raised by the trainer on request.

``QSWEEP_FAULT_OOM="step=2,min_micro_batch=4"`` makes :func:`trainers.loop.fit` raise a real
``torch.OutOfMemoryError`` before optimizer step 2 whenever the micro-batch is at least 4 —
so a sweep's retry with half the micro-batch gets past it, as it would past a real
out-of-memory error. Unset (always, outside tests), nothing happens.
"""

from __future__ import annotations

import os

import torch

OOM_VARIABLE = "QSWEEP_FAULT_OOM"


def _oom_setting() -> dict[str, int] | None:
    raw = os.environ.get(OOM_VARIABLE)
    if not raw:
        return None
    setting = {}
    for part in raw.split(","):
        key, _, value = part.partition("=")
        setting[key.strip()] = int(value)
    return setting


def maybe_raise_oom(step: int, micro_batch_size: int) -> None:
    """Raise ``torch.OutOfMemoryError`` at the configured step and micro-batch (see module doc)."""
    setting = _oom_setting()
    if setting is None:
        return
    if step == setting.get("step", 1) and micro_batch_size >= setting.get("min_micro_batch", 1):
        raise torch.OutOfMemoryError(
            f"injected by {OOM_VARIABLE}: out of memory at step {step} with micro-batch {micro_batch_size}")
