"""The evaluation's share of a default trial: one trial as the default search runs it.

The default search's budget (the first 0.17 of a one-epoch budget, 24 micro-batches of the
shipped data), its median settings (rank 16, alpha 32, lr 2e-4, accumulation 2), the
validation subset of 16 examples at micro-batches 0, 8, 16 and 24 (the pruner's rungs) and
the whole split (71 examples) at the end, which the objective needs. The base model's score
at step 0 is read from the study-wide cache when an earlier trial left it there (as every
trial but a study's first does), else computed; the row says which.

    python -m bench.trial_share
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.table import Row, report

DEFAULT_TRIAL = ["train.epochs=1", "train.stop_after_epochs=0.17", "train.grad_accumulation=2",
                 "lora.rank=16", "lora.alpha=32", "optimizer.lr=2e-4"]


def rows() -> list:
    from sweep import paths
    from sweep.config import compose
    from sweep.trial import run_trial

    cached = paths.cache_root() / "base-scores"
    before = set(cached.glob("*.json")) if cached.exists() else set()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*DEFAULT_TRIAL, f"mlflow.tracking_uri=sqlite:///{tmp}/m.db"]
        result = run_trial(compose(overrides), Path(tmp) / "trial", overrides=overrides)
    t = result.train
    base = "computed" if set(cached.glob("*.json")) - before else "read from the cache"
    share = t.eval_seconds / (t.train_seconds + t.eval_seconds)
    return [Row("evaluation share of a default trial", share, "", "<= 10%", share <= 0.10,
                f"{t.eval_seconds:.0f} s of evaluation against {t.train_seconds:.0f} s of "
                f"training ({t.iterations} micro-batches; the base score {base})")]


def main() -> None:
    report(lambda: rows())


if __name__ == "__main__":
    main()
