"""Optimizer and learning-rate schedule of the adapter weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from qsweep.trainers.config import TrainConfig

_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    """AdamW over ``params``: torch's (fused on CUDA) or bitsandbytes' paged 32/8-bit one."""
    options: dict[str, Any] = {
        "lr": cfg.learning_rate,
        "betas": (0.9, cfg.adam_beta2),
        "weight_decay": cfg.weight_decay,
    }
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, fused=device.type == "cuda", **options)
    import bitsandbytes as bnb

    paged = {"paged_adamw_32bit": bnb.optim.PagedAdamW32bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}
    return paged[cfg.optimizer](params, **options)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """Linear warmup over ``warmup_ratio`` of the steps, then the configured schedule."""
    from transformers import get_scheduler

    return get_scheduler(
        _SCHEDULES[cfg.lr_schedule],
        optimizer,
        num_warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps),
        num_training_steps=cfg.max_steps,
    )
