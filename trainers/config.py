"""Typed configuration of one QLoRA trial.

A trial config has five sections: ``model``, ``quant``, ``lora``, ``train`` and ``data``.
Defaults follow the QLoRA paper (Dettmers et al. 2023): NF4 with double quantization, bf16
compute, LoRA r=64 / alpha=16 on all linear layers, paged AdamW 32-bit, constant learning
rate 2e-4, max grad norm 0.3, loss on the response only.

Load one from YAML with :func:`qsweep.trainers.config_loading.load_config`; every problem is
reported with its key path before any model loads. Example::

    qsweep train configs/trial/smollm2-offline.yaml lora.r=16 quant.type=fp4
"""

from __future__ import annotations

import contextlib
import re
import string
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from qsweep.trainers.assets import ASSETS
from qsweep.trainers.data_recipes import RECIPES, TEMPLATES
from qsweep.trainers.hashing import json_sha256

Precision = Literal["bf16", "fp16", "fp32"]

TARGET_MODULE_PRESETS = ("attention", "mlp", "all-linear")
"""LoRA target presets: attention projections, MLP projections, or every linear layer."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigProblems(ValueError):
    """Problems found by a section's own checks, each as (key inside the section, message).

    Raised from section validators so that the loader can report each problem under its
    full key path (``quant.type``) rather than under the section (``quant``).
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


def looks_like_local_path(name: str) -> bool:
    """True for names written as filesystem paths (``/x``, ``./x``, ``../x``, ``~/x``)."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


class ConfigSection(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelConfig(ConfigSection):
    """The base model that is quantized and adapted."""

    name: str
    """Offline asset name (``qsweep assets list``), Hugging Face id, or local directory."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of a Hugging Face model."""
    dtype: Precision = "bf16"
    """dtype of the weights that stay unquantized (embeddings, norms, 16-bit baseline)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub checkpoint. Off unless you trust its author."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        name = name.strip()
        if not name:
            raise ValueError("must not be empty")
        if name in ASSETS:
            return name
        if looks_like_local_path(name):
            path = Path(name).expanduser()
            if not path.is_dir():
                raise ValueError(f"local model directory {name!r} does not exist")
            if not (path / "config.json").is_file():
                raise ValueError(f"{name!r} has no config.json: not a model directory")
            return name
        if not _HUB_ID.match(name):
            known = ", ".join(sorted(ASSETS))
            raise ValueError(f"{name!r} is neither an offline asset ({known}), a local path "
                             "(start it with ./ or /), nor a hub id like 'org/model'")
        return name

    @model_validator(mode="after")
    def _check_revision(self) -> ModelConfig:
        if self.revision is not None and (self.name in ASSETS or looks_like_local_path(self.name)):
            raise ConfigProblems([("revision", "only applies to Hugging Face hub models")])
        return self


class QuantConfig(ConfigSection):
    """How the frozen base model is stored: 4-bit (QLoRA), 8-bit, or 16-bit (plain LoRA)."""

    bits: Literal[4, 8, 16] = 4
    """Storage bits of the base model's linear layers; 16 is the plain LoRA baseline."""
    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type: NormalFloat4 or Float4 (E2M1). Ignored (must not be fp4) for 8/16 bits."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.37 bits/parameter). 4-bit only."""
    compute_dtype: Precision = "bf16"
    """dtype of the matrix multiplications (and of autocast during training)."""

    @model_validator(mode="after")
    def _check(self) -> QuantConfig:
        # FP4 is a 4-bit format, so asking for it with 8 or 16 bits is a contradiction. The
        # defaults (nf4, double_quant) are simply ignored there, which lets `quant.bits=16`
        # turn any 4-bit config into the 16-bit baseline from the command line.
        if self.bits != 4 and self.type == "fp4":
            raise ConfigProblems(
                [("type", f"'fp4' is a 4-bit data type, but quant.bits is {self.bits}")]
            )
        return self

    @property
    def label(self) -> str:
        """Short data-type label as the paper writes it: ``NF4+DQ``, ``FP4``, ``16-bit``."""
        if self.bits == 16:
            return "16-bit"
        if self.bits == 8:
            return "Int8"
        return self.type.upper() + ("+DQ" if self.double_quant else "")


class LoraConfig(ConfigSection):
    """The LoRA adapters that are trained on top of the frozen base."""

    r: int = Field(64, gt=0)
    """Rank of each adapter."""
    alpha: float = Field(16, gt=0)
    """Scaling numerator: the adapter output is multiplied by alpha / r."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout on the adapter input (paper: 0.1 up to 13B, 0.05 above)."""
    target_modules: str | list[str] = "all-linear"
    """A preset (attention, mlp, all-linear) or a list of module names such as [q_proj, v_proj]."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _check_targets(cls, value: Any) -> Any:
        presets = ", ".join(TARGET_MODULE_PRESETS)
        if isinstance(value, str):
            if value not in TARGET_MODULE_PRESETS:
                raise ValueError(
                    f"unknown preset {value!r}; use one of {presets} or a list of module names"
                )
            return value
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("must name at least one module")
            bad = [v for v in value if not isinstance(v, str) or not v.strip()]
            if bad:
                raise ValueError(f"module names must be non-empty strings, got {bad!r}")
            return list(value)
        raise ValueError(f"must be a preset ({presets}) or a list of module names, got {value!r}")


MISSING_FILES: ContextVar[list[str] | None] = ContextVar("qsweep_missing_files", default=None)
"""Set by :func:`tolerating_missing_files`: local data files found missing while validating."""


@contextlib.contextmanager
def tolerating_missing_files() -> Iterator[list[str]]:
    """Within the block, a ``data.path`` that does not exist is collected in the yielded list
    instead of failing validation (``qsweep plan`` shows such a plan with a warning)."""
    missing: list[str] = []
    token = MISSING_FILES.set(missing)
    try:
        yield missing
    finally:
        MISSING_FILES.reset(token)


class TrainConfig(ConfigSection):
    """The optimization loop."""

    max_steps: int = Field(10_000, gt=0)
    """Optimizer steps (paper: 10,000 for 7B/13B on Alpaca and FLAN)."""
    micro_batch_size: int | Literal["auto"] = 1
    """Sequences per forward/backward pass; ``auto``: the largest divisor of batch_size whose
    micro-batch fits max_memory_gib (the cost model's estimate, then a forward and backward pass
    of the longest examples), with the accumulation to match; chosen when training starts,
    recorded on the run and kept by a resumed run."""
    grad_accum_steps: int = Field(16, gt=0)
    """Micro-batches per optimizer step; the batch is micro_batch_size x grad_accum_steps (with
    micro_batch_size auto: batch_size / the chosen micro-batch, this value unused)."""
    batch_size: int | None = Field(None, gt=0)
    """Examples per optimizer step: micro_batch_size x grad_accum_steps (filled in); required
    with micro_batch_size auto, which keeps it whatever micro-batch it chooses."""
    kernels: Literal["none", "auto"] = "none"
    """auto: Liger Kernel's fused RMSNorm, rotary, SwiGLU and linear cross-entropy where they
    apply (CUDA, Triton, ``pip install 'qsweep[kernels]'``, a model type Liger knows; otherwise
    transformers' own, with the reason logged); none: transformers' own modules."""
    max_memory_gib: float | None = Field(None, gt=0)
    """GPU memory budget of micro_batch_size auto; default: the GPU's memory less
    max(2 GiB, 10%)."""
    group_by_length: bool = False
    """Within each optimizer step, form the micro-batches from examples of similar length (the
    step's examples sorted by length): less padding, the same examples per step and, as the
    loss is normalized by the step's target tokens, the same loss and gradients up to float
    rounding (with lora.dropout > 0 the dropout masks fall differently). Helps only with
    grad_accum_steps > 1."""
    packing: bool | Literal["auto"] = "auto"
    """Lay each micro-batch's examples end to end in one row without padding, each attending
    only to itself (on CUDA through torch's variable-length Flash Attention): the same targets
    and, up to float rounding, the same loss and gradients as padding. auto: pack where it
    measured faster (bench/README.md, "Packing a micro-batch into one row": 1.4-2.5x on short
    examples), that is a micro-batch of several examples on a CUDA GPU of compute capability 8.0
    or later, a model whose attention goes through transformers' attention interface and no
    attention dropout; otherwise pad, with the reason logged. What auto chose is recorded on the
    run (``train.applied_packing``) and kept by a resumed run (unless on a GPU that cannot pack).
    auto and false share one config identity (packing changes float rounding only); true has its
    own, as before auto existed."""
    learning_rate: float = Field(2e-4, gt=0)
    """Peak learning rate (paper: 2e-4 for 7B/13B, 1e-4 above)."""
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Fraction of max_steps spent in linear warmup."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay of AdamW on the adapter weights."""
    adam_beta2: float = Field(0.999, gt=0, lt=1)
    """AdamW second-moment decay."""
    max_grad_norm: float = Field(0.3, ge=0)
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    optimizer: Literal["adamw", "paged_adamw_32bit", "paged_adamw_8bit"] = "paged_adamw_32bit"
    """adamw (torch, fused on CUDA) or bitsandbytes' paged AdamW with 32- or 8-bit state (the
    paper's). The same update rule; on short examples with compiled layers, adamw trained 12%
    faster for 1.2 GiB more (the paged one updates each LoRA tensor in a call of its own;
    bench/README.md, "qsweep trial with the fast layout")."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    uncheckpointed_layers: int = Field(0, ge=0)
    """With gradient_checkpointing, the last N decoder layers keep their activations instead of
    recomputing them: each saves about 1/layers of the recompute and costs one layer's
    activations (bench/README.md, "Compiled layers, embeddings in bf16, relaxed checkpointing").
    More than the model's layers means all of them."""
    fp32_embeddings: bool = True
    """Keep the input embeddings and LM head of a quantized base in float32, as peft's
    ``prepare_model_for_kbit_training`` leaves them (the residual stream then runs in float32).
    false casts them back to quant.compute_dtype, as qlora.py does: less memory and fewer casts
    (bench/README.md); the norms stay float32 either way."""
    compile: bool = False
    """Compile each decoder layer with ``torch.compile`` (one graph for all layers, shapes
    dynamic): fewer, fused kernels launched from the host, which bounds short-example steps on a
    GPU (bench/README.md, "Compiled layers, embeddings in bf16, relaxed checkpointing"). The
    first steps pay the compilation (about a minute for an 8B model); the computation is the same
    up to float rounding. With kernels auto, only Liger's fused cross-entropy is applied."""
    max_source_length: int = Field(384, gt=0)
    """Prompt tokens kept per example (truncated on the right)."""
    max_target_length: int = Field(128, gt=0)
    """Response tokens kept per example."""
    response_only_loss: bool = True
    """Train on response tokens only, as the paper does; false trains on the prompt too."""
    seed: int = Field(0, ge=0)
    """Seed of adapter initialization, dropout and data order."""
    checkpoint_every: int = Field(250, ge=0)
    """Save a resumable checkpoint every N optimizer steps; 0 saves none."""
    keep_checkpoints: int = Field(2, gt=0)
    """How many of the newest checkpoints to keep."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("micro_batch_size", mode="before")
    @classmethod
    def _check_micro_batch(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError(f"must be a positive integer or auto, got {value!r}")

    @model_validator(mode="after")
    def _check_batch(self) -> TrainConfig:
        if self.micro_batch_size == "auto":
            if self.batch_size is None:
                raise ConfigProblems([("batch_size", "is required with train.micro_batch_size: auto "
                                                     "(the examples per optimizer step it keeps)")])
            return self
        product = self.micro_batch_size * self.grad_accum_steps
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", product)  # frozen: filled in once, here
        elif self.batch_size != product:
            raise ConfigProblems([("batch_size", f"must be micro_batch_size x grad_accum_steps "
                                                 f"({self.micro_batch_size} x {self.grad_accum_steps} = "
                                                 f"{product}), got {self.batch_size}; or set "
                                                 "micro_batch_size: auto")])
        return self

    @property
    def auto_layout(self) -> bool:
        """The micro-batch is chosen when training starts (``micro_batch_size: auto``)."""
        return self.micro_batch_size == "auto"


class DataConfig(ConfigSection):
    """The fine-tuning data: a built-in recipe or a local JSONL/CSV file."""

    name: str | None = None
    """Built-in recipe (alpaca, oasst1, self-instruct, longform, chip2, flan_v2, mmlu-heldout)."""
    path: Path | None = None
    """Local JSONL or CSV file (relative to the working directory)."""
    split: str = "train"
    """Split of a hub dataset."""
    template: str | None = None
    """Prompt template: alpaca, plain, chat, or a format string over the record's fields
    such as 'Question: {question}\\nAnswer:'. Default: the recipe's own."""
    prompt_field: str = "prompt"
    """Field of a local file that holds the prompt (used by the plain and chat templates)."""
    response_field: str = "response"
    """Field of a local file that holds the response the model learns to produce."""
    limit: int | None = Field(None, gt=0)
    """Use at most this many examples (the first ones, before shuffling)."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str | None) -> str | None:
        if name is not None and name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(RECIPES))}")
        return name

    @field_validator("path")
    @classmethod
    def _check_path(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.expanduser().is_file():
            missing = MISSING_FILES.get()
            if missing is None:
                raise ValueError(f"file {str(path)!r} does not exist")
            missing.append(str(path))  # qsweep plan: shown with a warning; run refuses it
        if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
            raise ValueError(f"must be a .jsonl, .json or .csv file, got {path.name!r}")
        return path

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str | None) -> str | None:
        problem = template_problem(template) if template is not None else None
        if problem:
            raise ValueError(problem)
        return template

    @model_validator(mode="after")
    def _check_source(self) -> DataConfig:
        recipe = RECIPES.get(self.name) if self.name else None
        if self.name is None and self.path is None:
            raise ConfigProblems([("name", "give a recipe name or data.path (a local JSONL/CSV file)")])
        if recipe is not None and recipe.needs_path and self.path is None:
            raise ConfigProblems([("path", f"recipe {self.name!r} reads a local file: {recipe.path_hint}")])
        if recipe is not None and not (recipe.needs_path or recipe.takes_path) and self.path is not None:
            raise ConfigProblems([("path", f"recipe {self.name!r} does not read a local file")])
        return self


def template_problem(template: str) -> str | None:
    """Why ``template`` is neither a named template nor a usable format string, or None."""
    if template in TEMPLATES:
        return None
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        return f"not a valid format string ({err}): {template!r}"
    if not fields:
        names = ", ".join(sorted(TEMPLATES))
        return (f"unknown template {template!r}; use one of {names} or a format string "
                "with {field} placeholders")
    if any(not f.isidentifier() for f in fields):
        return f"placeholders must be plain field names, got {fields!r}"
    return None


class TrainingConfig(BaseModel):
    """What one trial's training needs: the five training sections of a trial config.

    The orchestrator's ``TrialConfig`` extends it with evaluation and tracking sections.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    NON_IDENTITY_SECTIONS: ClassVar[tuple[str, ...]] = ()
    """Sections that do not change what a trial computes (left out of its hash and params)."""

    model: ModelConfig
    """The base model."""
    quant: QuantConfig = QuantConfig()
    """Quantization of the base."""
    lora: LoraConfig = LoraConfig()
    """The trained adapters."""
    train: TrainConfig = TrainConfig()
    """The optimization loop."""
    data: DataConfig
    """The fine-tuning data."""

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain YAML/JSON-able data."""
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted keys to values (``{"lora.r": 64, ...}``), as MLflow params are named.

        Sections outside the trial's identity (tracking: it may hold credentials) are left out.
        """
        flat: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if section in self.NON_IDENTITY_SECTIONS:
                continue
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        return flat

    ADDED_TRAIN_OPTIONS: ClassVar[dict[str, tuple[Any, ...]]] = {
        "group_by_length": (False,), "kernels": ("none",), "packing": (False, "auto"),
        "fp32_embeddings": (True,)}
    """Train options added after trials were recorded, with the values that leave training as
    it was (up to float rounding): left out of the identity at those values."""

    def identity(self) -> dict[str, Any]:
        """The settings that define what the trial computes.

        Settings that cannot matter are left out, so that configs which compute the same
        thing share one hash: the 4-bit type and double quantization of a 16- or 8-bit
        base, the checkpoint cadence, the device, and non-identity sections.
        """
        values = {k: v for k, v in self.to_dict().items() if k not in self.NON_IDENTITY_SECTIONS}
        if self.quant.bits != 4:
            values["quant"].pop("type")
            values["quant"].pop("double_quant")
        for key in ("checkpoint_every", "keep_checkpoints", "device", "max_memory_gib",
                    "uncheckpointed_layers", "compile"):
            values["train"].pop(key)
        # the batch is the micro-batch times the accumulation (unless auto chooses the layout,
        # where the accumulation follows from the choice): one of them says nothing new
        values["train"].pop("grad_accum_steps" if self.train.auto_layout else "batch_size")
        for key, neutral in self.ADDED_TRAIN_OPTIONS.items():  # so earlier trials keep their hash
            if key in values["train"] and values["train"][key] in neutral:
                values["train"].pop(key)
        return values

    def content_hash(self) -> str:
        """sha256 (hex) of :meth:`identity`: the trial's identity across machines and runs."""
        return json_sha256(self.identity())
