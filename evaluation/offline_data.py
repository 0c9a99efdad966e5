"""The data behind qsweep's offline lm-eval tasks, built from the ``mmlu`` asset.

``mmlu_offline``: each subject's questions are split once, by a fixed seed, into 5 few-shot
("dev") questions and the evaluated ("test") rest — so few-shot examples are never themselves
evaluated, whatever subset a run samples. 57 x 5 = 285 questions are dev; 13,752 are test.
Five more questions repeat the text of a dev question of their subject (two word for word,
answers included: college physics' helium question, machine learning's Gaussian Bayes
classifier question); a 5-shot prompt would show them their own answer, so they are left out.

``perplexity_offline``: the text of 10 test questions from each subject that no offline
training set uses (the subjects outside ``qsweep.trainers.mmlu.TRAIN_SUBJECTS``): 530 documents.

lm-eval calls these through ``custom_dataset`` in the task YAML under ``evaluation/tasks``.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Any

from qsweep.evaluation.config import OFFLINE_DEV_PER_SUBJECT
from qsweep.evaluation.mmlu_categories import SUBJECT_CATEGORIES, subject_key
from qsweep.trainers import assets, mmlu

SPLIT_SEED = "qsweep-mmlu-offline-v1"
PERPLEXITY_DOCS_PER_SUBJECT = 10


@lru_cache(maxsize=1)
def questions_by_subject() -> dict[str, list[mmlu.MMLUQuestion]]:
    """Every MMLU test question, keyed by lm-eval's subject name, in file order."""
    grouped: dict[str, list[mmlu.MMLUQuestion]] = {}
    for question in mmlu.load_questions(assets.ensure("mmlu") / "mmlu.jsonl"):
        grouped.setdefault(subject_key(question.subject), []).append(question)
    unknown = set(grouped) - set(SUBJECT_CATEGORIES)
    if unknown:
        raise ValueError(f"mmlu asset has subjects lm-eval's mmlu lacks: {sorted(unknown)}")
    return grouped


def mmlu_split(subject: str) -> tuple[list[mmlu.MMLUQuestion], list[mmlu.MMLUQuestion]]:
    """(dev, test) questions of ``subject`` (lm-eval spelling, e.g. ``high_school_physics``).

    Dev holds 5 questions drawn with a fixed seed, in drawn order (the few-shot order);
    test holds the others in file order, less those whose question text (normalized: case and
    whitespace) is that of a dev question: MMLU repeats a few questions, and a 5-shot prompt
    would show such a question its own answer.
    """
    questions = questions_by_subject()[subject]
    drawn = random.Random(f"{SPLIT_SEED}:{subject}").sample(range(len(questions)),
                                                             OFFLINE_DEV_PER_SUBJECT)
    held = set(drawn)
    shown = {normalized(questions[i].question) for i in drawn}
    return [questions[i] for i in drawn], [q for i, q in enumerate(questions)
                                           if i not in held and normalized(q.question) not in shown]


def normalized(text: str) -> str:
    """Question text compared case- and whitespace-insensitively."""
    return " ".join(text.lower().split())


def training_free_subjects() -> list[str]:
    """Subjects whose questions no offline training recipe uses."""
    trained = {subject_key(s) for s in mmlu.TRAIN_SUBJECTS}
    return [s for s in SUBJECT_CATEGORIES if s not in trained]


def _doc(question: mmlu.MMLUQuestion) -> dict[str, Any]:
    # The fields of cais/mmlu, so the task YAML matches lm-eval's mmlu template exactly.
    return {"question": question.question, "subject": subject_key(question.subject),
            "choices": list(question.choices), "answer": question.answer}


def mmlu_subject_dataset(subject: str, **_: Any) -> Any:
    """lm-eval ``custom_dataset`` of one subject: ``dev`` and ``test`` splits."""
    import datasets

    dev, test = mmlu_split(subject)
    return datasets.DatasetDict({
        "dev": datasets.Dataset.from_list([_doc(q) for q in dev]),
        "test": datasets.Dataset.from_list([_doc(q) for q in test]),
    })


def perplexity_documents() -> list[dict[str, str]]:
    """The held-out text of ``perplexity_offline``: one question per document."""
    documents = []
    for subject in training_free_subjects():
        _, test = mmlu_split(subject)
        picked = random.Random(f"{SPLIT_SEED}:ppl:{subject}").sample(range(len(test)),
                                                                     PERPLEXITY_DOCS_PER_SUBJECT)
        documents += [{"text": test[i].question.strip(), "subject": subject} for i in sorted(picked)]
    return documents


def perplexity_dataset(**_: Any) -> Any:
    """lm-eval ``custom_dataset`` of ``perplexity_offline``: one ``test`` split."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(perplexity_documents())})
