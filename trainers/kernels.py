"""Fused training kernels (``train.kernels``): Liger Kernel's, where they apply.

``auto`` patches the model's transformers classes, before the weights load, with Liger Kernel's
RMSNorm, rotary embedding, SwiGLU MLP and fused linear cross-entropy (the loss computed from the
last hidden states in chunks, without the logits of the whole batch; evaluation, which needs
logits, gets them as before). It needs CUDA, Triton and the ``liger-kernel`` package
(``pip install 'qsweep[kernels]'``) and a model type Liger knows; otherwise the run trains with
transformers' own modules and says why. ``none`` never patches. The patches are process-wide,
which suits qsweep's one trial per process.

With ``train.compile`` the decoder layers are compiled, and ``torch.compile`` cannot trace
Liger's RMSNorm, rotary and SwiGLU functions (measured: it fails on ``LigerRMSNormFunction``);
it fuses those layers itself, so only the fused linear cross-entropy, which runs outside the
layers, is applied.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("qsweep")


def apply_kernels(choice: str, model_type: str, device: torch.device, compiled: bool = False) -> str:
    """Patch the classes of ``model_type`` per ``choice``; what the run trains with, in words.
    ``compiled``: the decoder layers will be compiled, so only the loss is patched."""
    if choice == "none":
        return "none"
    if device.type != "cuda":
        return "none (Liger's kernels need a CUDA device)"
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        return f"none (liger-kernel is unavailable: {err}; pip install 'qsweep[kernels]')"
    patch = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if patch is None:
        return f"none (Liger has no kernels for model type {model_type!r})"
    in_layers = not compiled
    patch(rope=in_layers, rms_norm=in_layers, swiglu=in_layers, cross_entropy=False,
          fused_linear_cross_entropy=True)
    if compiled:
        return "liger (fused_linear_cross_entropy; the compiled layers fuse the rest)"
    return "liger (rms_norm, rope, swiglu, fused_linear_cross_entropy)"
