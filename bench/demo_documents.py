"""How many perplexity documents the demo needs to resolve NF4+DQ from FP4 at step 0.

Evaluates the untuned SmolLM2-135M-Instruct stored as NF4+DQ and as FP4 on all 530 documents of
``perplexity_offline`` (one CPU thread each, as a demo trial), then, per sample size n:

* the demo's own sample (``eval.seed`` 1234, as ``eval.task_limits`` draws it): the ratio of
  corpus word perplexities with its bootstrap interval and the paired sign-flip (permutation)
  p-value over documents — the report's item-level comparison;
* random samples of n documents: the share whose p-value is below 0.05.

    python bench/demo_documents.py                       # evaluates both (about 6 min on 2 cores)
    python bench/demo_documents.py --items A.json.gz B.json.gz   # from earlier items files

Results in bench/README.md ("How many documents the demo evaluates").
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

SIZES = (100, 120, 130, 140, 150, 200)
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "trial" / "smollm2-offline.yaml"


def evaluate(quant_type: str, double_quant: bool, out: Path) -> Path:
    """The untuned base's items on every perplexity document, in a process of one thread."""
    code = f"""
import torch
torch.set_num_threads(1)
from pathlib import Path
from qsweep.evaluation.harness import evaluate_model
from qsweep.orchestrator.trial.config import TrialConfig
from qsweep.trainers.config_loading import load_config
from qsweep.trainers.loop import prepare
from qsweep.trainers.model import DTYPES
cfg = load_config(Path({str(CONFIG)!r}), ["quant.type={quant_type}", "quant.double_quant={double_quant}",
                  "eval.tasks=[perplexity_offline]", "eval.task_limits={{}}"], TrialConfig)
setup = prepare(cfg)
with setup.qlora.model.disable_adapter():
    outcome = evaluate_model(setup.qlora.model, setup.qlora.tokenizer, cfg.eval,
                             compute_dtype=DTYPES[cfg.quant.compute_dtype],
                             weight_dtype=DTYPES[cfg.model.dtype])
print(outcome.metrics, outcome.seconds)
outcome.items.write(Path({str(out)!r}))
"""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], check=True)
    return out / "items.json.gz"


def documents(path: Path) -> dict[str, np.ndarray]:
    columns = json.loads(gzip.decompress(path.read_bytes()))["documents"]
    return {key: np.array(columns[key]) for key in ("doc_id", "loglikelihood", "words")}


def compare(nf4dq: dict[str, np.ndarray], fp4: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    assert (nf4dq["doc_id"] == fp4["doc_id"]).all()
    difference, words = nf4dq["loglikelihood"] - fp4["loglikelihood"], nf4dq["words"]
    total = len(difference)
    print(f"all {total} documents: ratio {np.exp(-difference.sum() / words.sum()):.3f}")

    def p_value(d: np.ndarray) -> float:
        flips = rng.choice([-1, 1], size=(20000, len(d)))
        return float((np.abs((flips * d).sum(1)) >= abs(d.sum())).mean())

    for n in SIZES:
        picked = np.isin(nf4dq["doc_id"], random.Random("1234:perplexity_offline").sample(range(total), n))
        d, w = difference[picked], words[picked]
        draws = rng.integers(0, n, size=(2000, n))
        ratios = np.exp(-d[draws].sum(1) / w[draws].sum(1))
        low, high = np.percentile(ratios, [2.5, 97.5])
        samples = (difference[rng.choice(total, n, replace=False)] for _ in range(300))
        resolved = np.mean([p_value(sample) < 0.05 for sample in samples])
        print(f"n={n}: demo sample ratio {np.exp(-d.sum() / w.sum()):.3f} [{low:.3f}, {high:.3f}], "
              f"p = {p_value(d):.2g}, {w.sum()} words; random samples resolved: {resolved:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", nargs=2, type=Path, metavar=("NF4DQ", "FP4"))
    parser.add_argument("--out", type=Path, default=Path("bench-demo-documents"))
    args = parser.parse_args()
    nf4dq, fp4 = args.items or (evaluate("nf4", True, args.out / "nf4dq"),
                                evaluate("fp4", False, args.out / "fp4"))
    compare(documents(nf4dq), documents(fp4), np.random.default_rng(0))


if __name__ == "__main__":
    main()
