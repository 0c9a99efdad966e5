"""The untuned base's evaluation (step 0), evaluated once per cell of a sweep, not once per seed.

At step 0 the adapters are off (the evaluation disables them) and 4-bit quantization is
deterministic, so the seeds of a cell evaluate the same model on the same items (the
evaluation's sample is drawn with ``eval.seed``, not the trial's seed): their step-0
evaluations are identical, and on a sweep with several seeds most of that evaluation time was
spent computing the same numbers again. :func:`baseline_key` names what the step-0 evaluation
depends on; a trial records it as the tag ``qsweep.baseline_key`` once its baseline metrics and
``eval/baseline`` artifacts are logged. :func:`recorded_baseline` then finds, for a trial
about to evaluate its base:

* its own run, when the trial runs again (a retry or a resumed sweep): the evaluation is read
  back and not logged twice;
* else a sibling run of the same sweep (same MLflow parent run) with the same key: its metrics
  and ``eval/baseline`` artifacts are copied into the trial's run, tagged
  ``qsweep.baseline_from`` with the sibling's run id, so every run stays complete on its own.

A sweep starts every cell's first seed before any cell's second (the driver's order), so the
later seeds find their cell's baseline recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from qsweep.trainers.hashing import json_sha256

if TYPE_CHECKING:
    from qsweep.orchestrator.trial.config import TrialConfig

KEY_TAG = "qsweep.baseline_key"
SOURCE_TAG = "qsweep.baseline_from"
ARTIFACT_PATH = "eval/baseline"


class BaselineStore(Protocol):
    """What the lookup needs of a trial's tracker (``MlflowTracker`` in practice)."""

    run_id: str

    def runs_tagged(self, tag: str, value: str) -> list[str]:
        """Ids of this run and its siblings (same parent run) whose ``tag`` has ``value``."""
        ...

    def download_artifacts(self, run_id: str, path: str, into: Path) -> Path:
        """``run_id``'s artifacts under ``path``, downloaded into the directory ``into``."""
        ...


@dataclass(frozen=True)
class RecordedBaseline:
    """A step-0 evaluation found in MLflow: whose it is, its metrics and its files."""

    run_id: str
    metrics: dict[str, float]
    directory: Path
    """The downloaded ``eval/baseline`` artifacts (results.json, items.json.gz)."""


def baseline_key(cfg: TrialConfig, excluded_subjects: tuple[str, ...]) -> str:
    """sha256 of what the untuned base's evaluation depends on: the model, its quantization, the
    step-0 evaluation section, the MMLU subjects left out, the device and the kernels."""
    return json_sha256({
        "model": cfg.model.model_dump(mode="json"),
        "quant": cfg.quant.model_dump(mode="json"),
        "eval": cfg.eval.for_baseline().model_dump(mode="json"),
        "excluded_subjects": sorted(excluded_subjects),
        "device": cfg.train.device,
        "kernels": cfg.train.kernels,
    })


def recorded_baseline(store: BaselineStore, key: str, into: Path) -> RecordedBaseline | None:
    """The step-0 evaluation with ``key`` that this run or a sibling recorded (this run's first),
    downloaded into ``into``; None when there is none."""
    from qsweep.evaluation.results import summarize

    found = store.runs_tagged(KEY_TAG, key)
    if not found:
        return None
    source = store.run_id if store.run_id in found else found[0]
    directory = store.download_artifacts(source, ARTIFACT_PATH, into)
    results = json.loads((directory / "results.json").read_text())
    return RecordedBaseline(source, summarize(results), directory)
