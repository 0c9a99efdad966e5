"""What a checkpoint costs at the end of training: a full one (adapter, optimizer, schedule)
against the final one (the last step: no optimizer or schedule), on the trial of trial-8b.yaml.

Trains 4 steps with a checkpoint after every step (steps 1-3 full, step 4 final), timing each
``save_checkpoint`` call (``torch.cuda.synchronize`` before and after) and the bytes it wrote.

    source bench/gpu_setup.sh
    python3 bench/checkpoint_save.py --out $OUT/checkpoint_save.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import environment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "bench" / "trial-8b.yaml"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from qsweep.orchestrator.trial.config import load_trial_config
    from qsweep.trainers import checkpoint
    from qsweep.trainers.loop import fit, prepare

    cfg = load_trial_config(args.config, ["train.max_steps=4", "train.checkpoint_every=1",
                                          "train.keep_checkpoints=4"])
    saves: list[dict] = []
    save = checkpoint.save_checkpoint

    def timed_save(*a, **kw):
        torch.cuda.synchronize()
        started = time.perf_counter()
        path = save(*a, **kw)
        torch.cuda.synchronize()
        saves.append({"step": a[4].step, "final": bool(kw.get("final")),
                      "seconds": round(time.perf_counter() - started, 3),
                      "bytes": sum(f.stat().st_size for f in path.iterdir())})
        return path

    checkpoint.save_checkpoint = timed_save
    with tempfile.TemporaryDirectory() as workdir:
        fit(prepare(cfg), cfg, Path(workdir))
    result = {"saves": saves, "environment": environment()}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(saves, indent=1))


if __name__ == "__main__":
    main()
