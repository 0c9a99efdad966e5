"""Test-only fault injection stays out of the training loop unless a test asks for it."""

from __future__ import annotations

import pytest
import torch
from qsweep.trainers.faults import OOM_VARIABLE, oom_injector


def test_the_oom_injector_exists_only_when_asked_for_and_raises_a_real_oom() -> None:
    assert oom_injector({}) is None  # no hook: the loop checks nothing
    hook = oom_injector({OOM_VARIABLE: "step=2,min_micro_batch=4"})
    hook(1, 8)
    hook(2, 2)  # the retry's smaller micro-batch gets past it
    with pytest.raises(torch.OutOfMemoryError, match="out of memory at step 2 with micro-batch 4"):
        hook(2, 4)
