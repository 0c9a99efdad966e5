"""The quantized base model with LoRA adapters, built from a trial config.

``load_qlora_model`` resolves the model (offline asset, local directory or hub id), checks
the LoRA targets against a weightless skeleton of the architecture, then loads the weights
through bitsandbytes (4-bit NF4/FP4 with or without double quantization, 8-bit, or 16-bit
for the plain LoRA baseline) and wraps them with peft. Weights load from safetensors only,
and model code from the hub runs only with ``model.trust_remote_code: true``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from qsweep.trainers import assets, hub
from qsweep.trainers.config import LoraConfig, ModelConfig, QuantConfig, TrainingConfig, looks_like_local_path
from qsweep.trainers.errors import SetupError
from qsweep.trainers.footprint import WeightFootprint, measure
from qsweep.trainers.kernels import apply_kernels
from qsweep.trainers.phases import PhaseClock

log = logging.getLogger("qsweep")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

_ATTENTION_PARTS = ("attn", "attention")
_MLP_PARTS = ("mlp", "ffn", "feed_forward")


@dataclass
class QLoRAModel:
    """A trainable model: the quantized base wrapped by peft, and its tokenizer."""

    model: Any
    """``peft.PeftModel`` around a transformers causal LM."""
    tokenizer: Any
    device: torch.device
    footprint: WeightFootprint
    target_modules: list[str]
    kernels: str = "none"
    """The fused kernels it trains with (``qsweep.trainers.kernels``), in words."""

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SetupError("train.device", f"{spec!r} requested but no CUDA device is visible")
    return device


def model_source(cfg: ModelConfig) -> str:
    """The path or hub id that transformers loads ``cfg.name`` from (fetching assets)."""
    if cfg.name in assets.ASSETS:
        return str(assets.ensure(cfg.name))
    if looks_like_local_path(cfg.name):
        return str(Path(cfg.name).expanduser())
    hub.require_hub(
        f"model {cfg.name!r}",
        offline_hint="Offline alternative: model.name=smollm2-135m-instruct (qsweep assets "
                     "list), or a local model directory; HF_HUB_OFFLINE=1 uses the hub cache.",
    )
    return cfg.name


def bnb_config(quant: QuantConfig) -> Any:
    """The ``BitsAndBytesConfig`` for ``quant``, or None for the 16-bit baseline."""
    from transformers import BitsAndBytesConfig

    if quant.bits == 16:
        return None
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=DTYPES[quant.compute_dtype],
    )


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the linear layers LoRA may target (the output head excluded)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    ]


def resolve_targets(linear_names: list[str], lora: LoraConfig) -> list[str]:
    """The linear layers that ``lora.target_modules`` selects, by qualified name.

    Presets classify a layer by its parents' names (``self_attn`` -> attention, ``mlp`` ->
    MLP), which holds across Llama, Mistral, Qwen, Gemma and most decoder families.
    Explicit names match a qualified name exactly or as its last components.
    """
    def parents(name: str) -> list[str]:
        return name.lower().split(".")[:-1]

    spec = lora.target_modules
    if spec == "all-linear":
        chosen = list(linear_names)
    elif spec == "attention":
        chosen = [n for n in linear_names if any(p in part for part in parents(n) for p in _ATTENTION_PARTS)]
    elif spec == "mlp":
        chosen = [n for n in linear_names if any(p in part for part in parents(n) for p in _MLP_PARTS)]
    else:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        unmatched = [t for t in spec if not any(n == t or n.endswith("." + t) for n in linear_names)]
        if unmatched:
            raise SetupError(
                "lora.target_modules",
                f"no linear layer named {', '.join(map(repr, unmatched))} in this model; "
                f"its linear layers are {', '.join(leaves)}",
            )
        chosen = [n for n in linear_names if any(n == t or n.endswith("." + t) for t in spec)]
    if not chosen:
        raise SetupError("lora.target_modules",
                              f"preset {spec!r} matches no linear layer of this model")
    return chosen


def _load_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision is not None:
        kwargs["revision"] = cfg.revision
    return kwargs


def require_safetensors(source: str) -> None:
    """Refuse a local model directory without safetensors weights before anything loads: qsweep
    never unpickles weights (a ``.bin`` file can run code when loaded)."""
    directory = Path(source)
    if directory.is_dir() and not any(directory.glob("*.safetensors")):
        found = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        what = f"only {', '.join(found)}" if found else "no weights"
        raise SetupError("model.name", f"{source} holds {what}, and qsweep loads weights from .safetensors "
                                       "files only; convert them (safetensors.torch.save_file) or point "
                                       "model.name at a directory with safetensors")


def check_targets(source: str, cfg: TrainingConfig) -> list[str]:
    """Resolve the LoRA targets on a weightless (meta-device) skeleton of the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    require_safetensors(source)
    model_config = AutoConfig.from_pretrained(source, **_load_kwargs(cfg.model))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(
            model_config, trust_remote_code=cfg.model.trust_remote_code
        )
    return resolve_targets(linear_module_names(skeleton), cfg.lora)


def load_tokenizer(source: str, cfg: ModelConfig) -> Any:
    """The model's tokenizer, padding on the right with EOS when it has no pad token."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, **_load_kwargs(cfg))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def keep_4bit_layers_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight for a fused
    inference kernel on its first eval-mode forward and never unpacks it; that kernel has no
    backward, so training after an evaluation would silently get no gradient through the
    frozen layers; it also computes in bf16 whatever the compute dtype. Evaluation runs on the
    trainable model, so the repacking stays off.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def load_qlora_model(cfg: TrainingConfig, device: torch.device, source: str | None = None,
                     targets: list[str] | None = None, tokenizer: Any = None,
                     phases: PhaseClock | None = None) -> QLoRAModel:
    """Load the base with ``cfg.quant``, attach LoRA per ``cfg.lora``, ready to train.

    Args:
        cfg: the trial config.
        device: where the model lives (bitsandbytes quantizes on load, on that device).
        source: path or hub id (default: :func:`model_source`).
        targets: qualified LoRA target names (default: :func:`check_targets`).
        tokenizer: the model's tokenizer (default: :func:`load_tokenizer`).
        phases: receives ``load/weights`` (read and quantize), ``load/kbit_prep`` and ``load/lora``.
    """
    import peft
    from transformers import AutoModelForCausalLM

    phases = phases or PhaseClock()
    source = source or model_source(cfg.model)
    targets = targets if targets is not None else check_targets(source, cfg)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(source, cfg.model)
    quantization = bnb_config(cfg.quant)
    kernels = "none"
    if cfg.train.kernels != "none":
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(source, **_load_kwargs(cfg.model)).model_type
        kernels = apply_kernels(cfg.train.kernels, model_type, device, compiled=cfg.train.compile)
        log.info("kernels: %s", kernels)
    with phases.phase("load/weights"):
        base = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=DTYPES[cfg.model.dtype],
            quantization_config=quantization,
            device_map={"": str(device)},
            use_safetensors=True,
            **_load_kwargs(cfg.model),
        )
        _sync(device)
    footprint = measure(base)
    keep_4bit_layers_trainable(base)
    base.config.use_cache = False
    checkpointing = {"use_reentrant": False}
    with phases.phase("load/kbit_prep"):
        if quantization is not None:
            base = peft.prepare_model_for_kbit_training(
                base,
                use_gradient_checkpointing=cfg.train.gradient_checkpointing,
                gradient_checkpointing_kwargs=checkpointing,
            )
            if not cfg.train.fp32_embeddings:
                embeddings_to(base, DTYPES[cfg.quant.compute_dtype])
        elif cfg.train.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
            base.enable_input_require_grads()
        if cfg.train.gradient_checkpointing and cfg.train.uncheckpointed_layers:
            relax_checkpointing(base, cfg.train.uncheckpointed_layers)
        _sync(device)
    with phases.phase("load/lora"):
        # Adapters are created and initialized where the model is: on a GPU that takes a
        # fraction of a second, where CPU initialization of an 8B model's r=64 adapters takes
        # seconds (and longer on the one thread a 1-CPU Ray trial gets).
        with torch.device(device):
            model = _attach_lora(base, cfg, targets)
        if cfg.train.compile:
            compile_layers(model)
        _sync(device)
    return QLoRAModel(model=model, tokenizer=tokenizer, device=device, footprint=footprint,
                      target_modules=targets, kernels=kernels)


def relax_checkpointing(model: Any, layers: int) -> int:
    """Turn gradient checkpointing off for the last ``layers`` decoder layers (transformers'
    ``GradientCheckpointingLayer`` modules, in model order); returns how many were turned off."""
    checkpointed = decoder_layers(model)
    relaxed = checkpointed[len(checkpointed) - min(layers, len(checkpointed)):]
    for layer in relaxed:
        layer.gradient_checkpointing = False
    log.info("gradient checkpointing: %d of %d layers, the last %d keep their activations",
             len(checkpointed) - len(relaxed), len(checkpointed), len(relaxed))
    return len(relaxed)


def embeddings_to(model: Any, dtype: torch.dtype) -> None:
    """Cast the input embeddings and the LM head to ``dtype`` (``train.fp32_embeddings: false``)."""
    for module in {model.get_input_embeddings(), model.get_output_embeddings()} - {None}:
        module.to(dtype)
    log.info("embeddings and LM head in %s", str(dtype).removeprefix("torch."))


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers (transformers' ``GradientCheckpointingLayer`` modules), in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model: Any) -> int:
    """``torch.compile`` each decoder layer (``train.compile``); compilation happens on first use."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    log.info("compile: %d decoder layers with torch.compile (compiled on the first steps)", len(layers))
    return len(layers)


def _sync(device: torch.device) -> None:
    # Phase timings must not leave queued GPU work to the next phase.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _attach_lora(base: Any, cfg: TrainingConfig, targets: list[str]) -> Any:
    import peft

    torch.manual_seed(cfg.train.seed)  # adapter initialization
    lora = peft.LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(base, lora)
