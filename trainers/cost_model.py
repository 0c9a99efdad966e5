"""What a trial will cost before it runs: peak GPU memory and training time, from the model's shape.

A first-order model for Llama-shaped decoders, calibrated on the reference measurements of one
H100 (bench/README.md, "Training throughput and memory on a GPU", raw figures in
``bench/results/train_throughput_h100_*.json``: Llama-3-8B shape, seq 1024,
LoRA r=64 on all linear layers). It is for planning (``qsweep plan`` prints it per sweep), not
for accounting: expect ±25%.

Memory (bytes) = base weights (4-bit: 4 bits + 0.5 bit of absmax per parameter, 0.127 with
double quantization — the same arithmetic as ``qsweep.trainers.footprint``; 8-bit: 8 bits + scales;
16-bit: 2 bytes) + embeddings in 16 bits + LoRA weights, gradients and optimizer state
(16 bytes per adapter parameter; 10 with 8-bit paged AdamW) + activations + logits.
Activations per token and layer are ``ACTIVATION_BYTES_PER_HIDDEN`` x hidden size (fitted to
the H100 figures without checkpointing); with gradient checkpointing only each layer's input is
kept, plus one layer's activations during its recomputation. Logits are counted three times in
fp32 (logits, their softmax, their gradient).

Time: a frozen base costs 2N FLOPs per token forward and 2N backward (no weight gradients),
plus 2N to recompute the forward under checkpointing (only for the checkpointed layers,
``train.uncheckpointed_layers``). Achieved utilisation grows with the positions a micro-batch
computes (``UTILISATION``, fitted to 8% at 1,024 and 23% at 4,096 on the H100's 989 dense
bf16 TFLOP/s; packed rows of about 2,600 real tokens measured 18%), and 16-bit LoRA runs
1.25x as fast as 4-bit at the same shape. Below about a thousand positions a pass is bound by
launching its kernels from the host, not by the GPU: it takes at least
``LAUNCH_SECONDS_PER_LAYER`` per decoder layer whatever its size. Compiled layers
(``train.compile``) run passes of up to 4,096 positions ``COMPILE_SPEEDUP`` times as fast.

Tokens: the real tokens of the data when known (``TOKENS_PER_EXAMPLE``: measured for the
offline data, estimated from published sizes for hub datasets), else the full length (max
source + max target), an upper bound. A padded micro-batch of several examples computes them
all at the full length (its longest example sets the row); a packed one (``train.packing``: true, or
auto, which packs on the reference GPU) or a micro-batch of one computes only the real tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qsweep.trainers.config import TrainingConfig

GIB = 2**30
H100_BF16_FLOPS = 989e12
"""Dense bf16 peak of the reference GPU (H100 SXM)."""
ACTIVATION_BYTES_PER_HIDDEN = {4: 89.0, 8: 89.0, 16: 60.0}
"""Saved activation bytes per token per layer, per unit of hidden size (fitted, see above)."""
UTILISATION = ((1024, 0.08), (4096, 0.23), (16384, 0.30))
"""(tokens per micro-batch, fraction of peak FLOP/s) measured/assumed for 4-bit QLoRA on an H100;
interpolated in log(tokens), flat outside."""
SPEEDUP_16BIT = 1.25
"""16-bit LoRA over 4-bit at the same shape (H100: 9,061 vs 7,249 tokens/s)."""
LAUNCH_SECONDS_PER_LAYER = 0.022
"""The shortest forward + backward pass per decoder layer, with checkpointing (8B shape, one
H100: 0.6-0.7 s a pass at micro-batch 1 of 1,024 tokens, 0.7-0.9 s for packed rows of 1,250
and 2,500 tokens, 0.6-1.2 s for single examples of 78; bench/README.md); two thirds of it
without checkpointing (no recomputed forward)."""
COMPILE_SPEEDUP = 1.5
"""Compiled decoder layers over eager ones for passes of up to 4,096 positions (H100, packed
rows of about 2,500 tokens: 1.51-1.80x in two calls; bench/README.md, "Compiled layers,
embeddings in bf16, relaxed checkpointing"); none assumed for larger passes (not measured to
pay)."""
TOKENS_PER_EXAMPLE = {
    "mmlu-heldout": 78.4,
    "alpaca": 140.0,
}
"""Mean real tokens an example of a dataset recipe holds (prompt template included, before
truncation at the default 384/128). mmlu-heldout: measured on the offline data (2,030 examples,
SmolLM2's tokenizer; bench/README.md, "What the cost model assumes"); alpaca: estimated from the
dataset's published size (47.8 MB for 52,002 rows holding the fields and the rendered text:
about 550 bytes of text a row, at 4 bytes a token). Others: unknown, counted at full length."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-shaped decoder."""

    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied_embeddings: bool = False

    @property
    def kv_width(self) -> int:
        return self.hidden * self.kv_heads // self.heads

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer, by module name."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' linear layers (what 4-bit quantization stores)."""
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embeddings and the LM head (kept in 16 bits)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params


KNOWN_SHAPES: dict[str, ModelShape] = {
    "huggyllama/llama-7b": ModelShape(32, 4096, 11008, 32000, 32, 32),
    "huggyllama/llama-13b": ModelShape(40, 5120, 13824, 32000, 40, 40),
    "huggyllama/llama-30b": ModelShape(60, 6656, 17920, 32000, 52, 52),
    "huggyllama/llama-65b": ModelShape(80, 8192, 22016, 32000, 64, 64),
    "meta-llama/Llama-2-7b-hf": ModelShape(32, 4096, 11008, 32000, 32, 32),
    "meta-llama/Llama-2-13b-hf": ModelShape(40, 5120, 13824, 32000, 40, 40),
    "meta-llama/Llama-2-70b-hf": ModelShape(80, 8192, 28672, 32000, 64, 8),
    "meta-llama/Meta-Llama-3-8B": ModelShape(32, 4096, 14336, 128256, 32, 8),
    "meta-llama/Llama-3.1-8B": ModelShape(32, 4096, 14336, 128256, 32, 8),
    "meta-llama/Llama-3.1-70B": ModelShape(80, 8192, 28672, 128256, 64, 8),
    "smollm2-135m-instruct": ModelShape(30, 576, 1536, 49152, 9, 3, tied_embeddings=True),
}
"""Shapes of common models, so an estimate needs no download; local directories are read from
their config.json."""

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def shape_of(model_name: str) -> ModelShape | None:
    """The shape of a known model or a local model directory; None when neither."""
    if model_name in KNOWN_SHAPES:
        return KNOWN_SHAPES[model_name]
    config_file = Path(model_name).expanduser() / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    heads = config.get("num_attention_heads", 1)
    return ModelShape(config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
                      config["vocab_size"], heads, config.get("num_key_value_heads") or heads,
                      bool(config.get("tie_word_embeddings", False)))


def adapted_modules(target_modules: str | list[str]) -> tuple[str, ...]:
    if target_modules == "attention":
        return ATTENTION
    if target_modules == "mlp":
        return MLP
    if target_modules == "all-linear":
        return ATTENTION + MLP
    return tuple(name.rsplit(".", 1)[-1] for name in target_modules)


@dataclass(frozen=True)
class TrainingCost:
    """The estimate for one trial's training on the reference GPU."""

    weight_bytes: float
    adapter_params: int
    adapter_state_bytes: float
    activation_bytes: float
    logit_bytes: float
    tokens_per_s: float
    tokens: float
    """Real tokens the trial trains on (steps x examples a step x tokens an example)."""

    @property
    def peak_bytes(self) -> float:
        return self.weight_bytes + self.adapter_state_bytes + self.activation_bytes + self.logit_bytes

    @property
    def seconds(self) -> float:
        return self.tokens / self.tokens_per_s


def weight_bytes(shape: ModelShape, bits: int, double_quant: bool) -> float:
    """Stored bytes of the base model (see ``qsweep.trainers.footprint`` for the arithmetic)."""
    if bits == 4:
        linear_bits = 4 + (8 / 64 + 32 / (64 * 256) if double_quant else 32 / 64)
    elif bits == 8:
        linear_bits = 8 + 32 / shape.hidden  # one fp32 scale per output row
    else:
        linear_bits = 16
    return shape.linear_params * linear_bits / 8 + shape.embedding_params * 2


def utilisation(tokens_per_micro_batch: int) -> float:
    (x0, y0), *rest = UTILISATION
    if tokens_per_micro_batch <= x0:
        return y0
    for x1, y1 in rest:
        if tokens_per_micro_batch <= x1:
            f = math.log(tokens_per_micro_batch / x0) / math.log(x1 / x0)
            return y0 + f * (y1 - y0)
        x0, y0 = x1, y1
    return y0


def divisors_descending(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def largest_fitting(batch_size: int, fits: Callable[[int], bool]) -> int:
    """The largest divisor of ``batch_size`` for which ``fits(micro_batch)`` holds; 1 if none
    (the micro-batch of ``train.micro_batch_size: auto``)."""
    return next((micro for micro in divisors_descending(batch_size) if fits(micro)), 1)


REFERENCE_GPU_BYTES = 80 * GIB
"""Memory of the reference GPU (H100 80GB): the budget of ``micro_batch_size: auto`` in estimates."""


def tokens_per_example(config: TrainingConfig) -> float | None:
    """Mean real tokens an example of the config's data holds (capped at its full length), or
    None when unknown (``TOKENS_PER_EXAMPLE``)."""
    known = TOKENS_PER_EXAMPLE.get(config.data.name) if config.data.path is None else None
    full = config.train.max_source_length + config.train.max_target_length
    return min(known, full) if known is not None else None


def training_cost(config: TrainingConfig, shape: ModelShape, *, micro_batch_size: int | None = None,
                  seq_len: int | None = None, fused_cross_entropy: bool | None = None) -> TrainingCost:
    """Peak memory and training time of ``config`` on ``shape`` (one reference GPU).

    ``micro_batch_size`` and ``seq_len`` replace the config's micro-batch and the positions each
    of its rows computes (by default: the real tokens of a packed row or a lone example, the full
    length of a padded one); with ``fused_cross_entropy`` (Liger's, ``train.kernels: auto``, the
    default when None) the logits are never materialized and not counted. With
    ``micro_batch_size: auto`` in the config and none given, the estimate takes the largest
    micro-batch that fits the reference GPU less 10%.
    """
    train, quant = config.train, config.quant
    full = train.max_source_length + train.max_target_length
    real = tokens_per_example(config) or full
    if fused_cross_entropy is None:
        fused_cross_entropy = train.kernels != "none"
    if micro_batch_size is None and train.auto_layout:
        budget = REFERENCE_GPU_BYTES * 0.9
        micro_batch_size = largest_fitting(train.batch_size, lambda m: training_cost(
            config, shape, micro_batch_size=m, seq_len=seq_len,
            fused_cross_entropy=fused_cross_entropy).peak_bytes <= budget)
    micro = micro_batch_size or train.micro_batch_size
    packed = train.packing is not False  # auto packs on the reference GPU (an H100)
    seq = seq_len or (real if packed or micro == 1 else full)
    tokens_per_micro_batch = micro * seq
    modules = adapted_modules(config.lora.target_modules)
    adapter_params = shape.layers * sum(config.lora.r * (a + b)
                                        for name, (a, b) in shape.linear_shapes().items() if name in modules)
    state_bytes_per_param = 10 if train.optimizer == "paged_adamw_8bit" else 16
    per_token_layer = ACTIVATION_BYTES_PER_HIDDEN[quant.bits] * shape.hidden
    kept = min(train.uncheckpointed_layers, shape.layers) if train.gradient_checkpointing else shape.layers
    checkpointed = shape.layers - kept
    activations = tokens_per_micro_batch * (checkpointed * 2 * shape.hidden + kept * per_token_layer
                                            + (per_token_layer if checkpointed else 0))
    logits = 0 if fused_cross_entropy else 3 * 4 * tokens_per_micro_batch * shape.vocab
    flops_per_token = (4 + 2 * checkpointed / shape.layers) * shape.params
    speed = utilisation(tokens_per_micro_batch) * H100_BF16_FLOPS / flops_per_token
    if quant.bits == 16:
        speed *= SPEEDUP_16BIT
    pass_seconds = max(tokens_per_micro_batch / speed,
                       LAUNCH_SECONDS_PER_LAYER * shape.layers * (2 + checkpointed / shape.layers) / 3)
    if train.compile and tokens_per_micro_batch <= 4096:
        pass_seconds /= COMPILE_SPEEDUP
    real_per_micro_batch = micro * min(real, seq)
    speed = real_per_micro_batch / pass_seconds
    tokens = train.max_steps * train.batch_size * min(real, seq)
    return TrainingCost(weight_bytes(shape, quant.bits, quant.double_quant), adapter_params,
                        adapter_params * state_bytes_per_param, activations, logits, speed, tokens)
