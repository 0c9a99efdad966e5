"""The offline MMLU test set: loading, the subject split, and lm-eval's prompt format.

The questions come from the ``mmlu`` asset (``qsweep assets fetch``). Training and evaluation
must never see the same questions, so the subjects are split once, here:
:data:`TRAIN_SUBJECTS` feed the ``mmlu-heldout`` fine-tuning recipe and are left out of every
offline evaluation; the other 53 subjects are evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LETTERS = ("A", "B", "C", "D")

TRAIN_SUBJECTS = (
    "elementary mathematics",
    "high school psychology",
    "miscellaneous",
    "prehistory",
)
"""Subjects held out from evaluation for offline fine-tuning, one per MMLU category
(STEM, social sciences, other, humanities): 2,030 questions."""


@dataclass(frozen=True)
class MMLUQuestion:
    """One multiple-choice question of the MMLU test set."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int
    """Index of the correct choice (0 = A)."""

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


def load_questions(path: Path) -> list[MMLUQuestion]:
    """Read the asset's JSONL (fields question, answer_a..d, correct_answer, topic)."""
    questions = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            choices = (row["answer_a"], row["answer_b"], row["answer_c"], row["answer_d"])
            questions.append(
                MMLUQuestion(
                    subject=row["topic"],
                    question=row["question"],
                    choices=choices,
                    answer=LETTERS.index(row["correct_answer"]),
                )
            )
    return questions


def subject_header(subject: str) -> str:
    """lm-eval's mmlu description line for a subject."""
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def format_question(question: MMLUQuestion) -> str:
    """lm-eval's mmlu ``doc_to_text``: the question, lettered choices, and ``Answer:``."""
    lines = [question.question.strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices, strict=True)]
    lines.append("Answer:")
    return "\n".join(lines)
