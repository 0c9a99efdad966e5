"""Llama-architecture models with random weights, written as safetensors model directories.

Tests use a tiny one (no download, seconds to train); benchmarks use real shapes such as
Llama-3-8B's, created on the machine that runs them. The tokenizer is byte-level (256 byte
tokens plus <s>, </s>, <pad>), so any text tokenizes without a vocabulary file. Example::

    python -m qsweep.trainers.random_model --shape llama3-8b --dtype bf16 --device cuda /dev/shm/llama3-8b
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

SHAPES: dict[str, dict[str, Any]] = {
    # A wide initialization gives the frozen random output head enough logit range for LoRA
    # alone to fit a small dataset (at 0.02, the logits of a 64-wide model stay near uniform).
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                 initializer_range=0.2),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=8192, rope_theta=500000.0),
}
"""Architectures by name; the vocabulary is the byte tokenizer's (259) unless given."""

SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")


def byte_tokenizer() -> Any:
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: i for i, char in enumerate(sorted(alphabet))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")


def write_random_llama(path: Path, shape: str = "tiny", *, seed: int = 0,
                       dtype: torch.dtype = torch.float32, vocab_size: int | None = None,
                       device: str = "cpu", tokenizer_from: Path | None = None) -> Path:
    """Create a randomly initialized Llama of ``shape`` and save it with the byte tokenizer.

    Args:
        path: output directory (config.json, model.safetensors, tokenizer files).
        shape: a key of :data:`SHAPES`.
        seed: weight initialization seed.
        dtype: storage dtype of the weights.
        vocab_size: defaults to the byte tokenizer's size; larger sizes model real vocabularies
            (Llama 3: 128,256) while the extra rows stay unused.
        device: where to initialize (``cuda`` is much faster for large shapes).
        tokenizer_from: a model directory whose tokenizer to use instead of the byte one
            (real token counts for real text, e.g. the offline SmolLM2's).
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from) if tokenizer_from else byte_tokenizer()
    config = LlamaConfig(
        vocab_size=vocab_size or len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **SHAPES[shape],
    )
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialize in the storage dtype: half the memory of fp32
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer-from", type=Path, default=None,
                        help="a directory whose tokenizer the model gets (default: the byte tokenizer)")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    write_random_llama(args.path, args.shape, seed=args.seed, dtype=dtype, vocab_size=args.vocab_size,
                       device=args.device, tokenizer_from=args.tokenizer_from)
    print(args.path)


if __name__ == "__main__":
    main()
