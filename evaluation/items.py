"""Per-item records of one evaluation: what item-level statistics need, compactly.

For every multiple-choice question (MMLU and the like): its task, lm-eval's document index and
content hash, whether the model answered it correctly, the chosen and the true answer. For
every perplexity document: its task, index and hash, the summed log-likelihood and its word and
byte counts. Stored column by column as gzipped JSON (``items.json.gz``, about 100 KB for the
full 13,752 offline MMLU questions), beside ``results.json`` in each evaluation's artifacts, so
that a report reads them back from MLflow wherever the sweep ran::

    records = ItemRecords.from_samples(samples)   # lm-eval's logged samples, per task
    records.write(directory)                      # -> directory / "items.json.gz"
    scores = ItemRecords.read(path).for_metric("eval/mmlu_offline/acc")
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsweep.evaluation.config import subject_task
from qsweep.evaluation.statistics import ACCURACY, PERPLEXITY

ITEMS_FILE = "items.json.gz"
PERPLEXITY_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


@dataclass
class ItemScores:
    """One metric's items in one evaluation: ``ids`` name them across trials (task:doc hash).

    ``kind`` is ``accuracy`` (``values`` are 0/1) or ``perplexity`` (``values`` are summed
    log-likelihoods, ``weights`` the words — or bytes — each document has)."""

    kind: str
    ids: list[str]
    values: list[float]
    weights: list[float] = field(default_factory=list)


@dataclass
class ItemRecords:
    """Columns of question records and of document records (one entry per item)."""

    questions: dict[str, list[Any]] = field(default_factory=lambda: {
        "task": [], "doc_id": [], "doc_hash": [], "correct": [], "chosen": [], "answer": []})
    documents: dict[str, list[Any]] = field(default_factory=lambda: {
        "task": [], "doc_id": [], "doc_hash": [], "loglikelihood": [], "words": [], "bytes": []})

    @classmethod
    def from_samples(cls, samples: dict[str, list[dict[str, Any]]]) -> ItemRecords:
        """From lm-eval's logged samples (``evaluate(..., log_samples=True)["samples"]``)."""
        records = cls()
        for task in sorted(samples):
            for sample in samples[task]:
                common = {"task": task, "doc_id": int(sample["doc_id"]),
                          "doc_hash": str(sample.get("doc_hash", ""))}
                if "acc" in sample:
                    scores = [float(resp[0]) for resp in sample.get("filtered_resps", [])]
                    chosen = max(range(len(scores)), key=scores.__getitem__) if scores else -1
                    answer = sample.get("target")
                    row = {**common, "correct": int(float(sample["acc"]) > 0), "chosen": chosen,
                           "answer": int(answer) if isinstance(answer, int) else -1}
                    _append(records.questions, row)
                elif "word_perplexity" in sample:
                    loglikelihood, words = sample["word_perplexity"]
                    _, size = sample.get("byte_perplexity", (loglikelihood, 0))
                    _append(records.documents, {**common, "loglikelihood": float(loglikelihood),
                                                "words": int(words), "bytes": int(size)})
        return records

    def __len__(self) -> int:
        return len(self.questions["task"]) + len(self.documents["task"])

    def write(self, directory: Path) -> Path:
        path = Path(directory) / ITEMS_FILE
        payload = json.dumps({"version": 1, "questions": self.questions, "documents": self.documents},
                             separators=(",", ":"))
        path.write_bytes(gzip.compress(payload.encode(), mtime=0))
        return path

    @classmethod
    def read(cls, path: Path) -> ItemRecords:
        payload = json.loads(gzip.decompress(Path(path).read_bytes()))
        return cls(questions=payload["questions"], documents=payload["documents"])

    def for_metric(self, metric: str) -> ItemScores | None:
        """The items behind a flat metric name (``qsweep.evaluation.results``):
        ``eval/<family>/acc`` (all the family's subjects; ``eval/<family>/subject/<s>/acc`` one),
        ``eval/<task>/acc``, ``eval/<task>/word_perplexity`` (or byte_perplexity), and
        ``eval/perplexity`` (the first perplexity task). None when no item stands behind it."""
        if metric == "eval/perplexity":
            tasks = self.documents["task"]
            return self._documents(tasks[0], "word_perplexity") if tasks else None
        parts = metric.split("/")
        if len(parts) < 3 or parts[0] != "eval":
            return None
        name, last = parts[1], parts[-1]
        if last in ("word_perplexity", "byte_perplexity") and len(parts) == 3:
            return self._documents(name, last)
        if last != "acc":
            return None
        subject = parts[3] if len(parts) == 5 and parts[2] == "subject" else None
        if len(parts) not in (3, 5) or (len(parts) == 5 and subject is None):
            return None  # a category (eval/<family>/<category>/acc): not kept apart here

        def wanted(task: str) -> bool:
            found = subject_task(task)
            if found is not None:
                return found[0] == name and (subject is None or found[1] == subject)
            return task == name and subject is None

        rows = [i for i, task in enumerate(self.questions["task"]) if wanted(task)]
        if not rows:
            return None
        q = self.questions
        return ItemScores(ACCURACY, [f"{q['task'][i]}:{q['doc_id'][i]}" for i in rows],
                          [float(q["correct"][i]) for i in rows])

    def _documents(self, task: str, metric: str) -> ItemScores | None:
        d = self.documents
        rows = [i for i, name in enumerate(d["task"]) if name == task]
        if not rows:
            return None
        weights = "words" if metric == "word_perplexity" else "bytes"
        return ItemScores(PERPLEXITY, [f"{d['task'][i]}:{d['doc_id'][i]}" for i in rows],
                          [float(d["loglikelihood"][i]) for i in rows], [float(d[weights][i]) for i in rows])


def _append(columns: dict[str, list[Any]], row: dict[str, Any]) -> None:
    for key, value in row.items():
        columns[key].append(value)
