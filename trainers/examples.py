"""Records to token sequences, and the seeded order in which micro-batches see them.

As in qlora.py: the prompt (truncated to ``max_source_length``) is followed by the response
plus EOS (truncated to ``max_target_length``); with ``response_only_loss`` the prompt's
labels are masked so only response tokens are learned.

The data order is a pure function of (seed, position): epoch ``e`` is a permutation drawn
from ``numpy.random.default_rng([seed, e])``, and micro-batch ``k`` is the ``k``-th slice of
the concatenated epochs. A checkpoint stores only the position, and a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from qsweep.trainers.config import TrainingConfig
from qsweep.trainers.data_recipes import DataError, Record, default_template, render_prompt

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


def tokenize(records: list[Record], tokenizer: Any, cfg: TrainingConfig) -> list[Example]:
    """Token ids and labels for each record under ``cfg``'s template and length limits."""
    template = default_template(cfg.data)

    def apply_chat(prompt: str) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise DataError("data.template: 'chat' needs a tokenizer with a chat template, and "
                            "this model's has none; use plain, alpaca or a format string")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )

    prompts = [render_prompt(r, template, apply_chat) for r in records]
    responses = [f"{r['response']}{tokenizer.eos_token}" for r in records]
    train = cfg.train
    sources = tokenizer(prompts, add_special_tokens=True, truncation=True,
                        max_length=train.max_source_length)["input_ids"]
    targets = tokenizer(responses, add_special_tokens=False, truncation=True,
                        max_length=train.max_target_length)["input_ids"]
    examples = []
    for source, target in zip(sources, targets, strict=True):
        if not target:
            continue
        prompt_labels = [IGNORE_INDEX] * len(source) if train.response_only_loss else list(source)
        examples.append(Example(tuple(source + target), tuple(prompt_labels + target)))
    if not examples:
        raise DataError("data: every example has an empty response after tokenization")
    return examples


class BatchOrder:
    """Which examples form micro-batch number ``position`` (0-based, over all epochs)."""

    def __init__(self, num_examples: int, micro_batch_size: int, seed: int):
        self.num_examples = num_examples
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.batches_per_epoch = -(-num_examples // micro_batch_size)
        self._cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._cache = (epoch, rng.permutation(self.num_examples))
        return self._cache[1]

    def micro_batch(self, position: int) -> list[int]:
        epoch, index = divmod(position, self.batches_per_epoch)
        start = index * self.micro_batch_size
        return self._permutation(epoch)[start : start + self.micro_batch_size].tolist()

    def epoch(self, position: int) -> float:
        """Fractional epochs completed after ``position`` micro-batches."""
        return position / self.batches_per_epoch


def group_by_length(micro_batches: list[list[int]], lengths: list[int]) -> list[list[int]]:
    """The examples of one optimizer step regrouped so that each micro-batch holds examples of
    similar length (``train.group_by_length``).

    The step's examples, longest first (ties in their original order), refill micro-batches of
    the same sizes: the step sees the same examples, and padding to each micro-batch's longest
    shrinks. Deterministic, so a resumed run regroups exactly as the uninterrupted one did.
    """
    pooled = [index for batch in micro_batches for index in batch]
    pooled.sort(key=lambda index: -lengths[index])  # stable: equal lengths keep their order
    grouped, start = [], 0
    for batch in micro_batches:
        grouped.append(pooled[start : start + len(batch)])
        start += len(batch)
    return grouped


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its longest sequence; padding is masked and unlabeled.

    Returns host tensors; the loop moves them to the device.
    """
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A batch's tensors moved to ``device`` (asynchronously from pinned memory); other values as
    they are."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for key, value in batch.items()}
