"""The base model's validation scores, computed once and reused by every trial.

Every trial of a study scores the base model at step 0 (its LoRA ``B`` matrices start at
zero, so the adapted model is the base model exactly: ``x @ A @ 0`` adds exact zeros,
whatever the rank, alpha or dropout). That score is the same in every trial with the same
base weights, validation examples and scoring settings, so it is written once to
``<cache>/base-scores/<key>.json`` and read back by the next trial. The key holds what the
score depends on: the model's config and weight files (size and modification time), the
tokenized validation split (its digest), the batch size, length limit and subset scored,
the seed, DoRA (whose magnitude makes the start equal only up to rounding), compilation,
and the MLX and sweep versions. Anything else changed (another split, model or subset)
gives another key, and the score is computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from sweep.training.scoring import Score

__all__ = ["BaseScores", "base_scores_key"]

log = logging.getLogger(__name__)


def _weight_files(model_dir: str) -> list:
    folder = Path(model_dir)
    if not folder.is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.iterdir() if p.is_file())


def base_scores_key(flat: Dict[str, Any], model_dir: str, val_digest: str, subset: int) -> str:
    """The cache key of one base-model score (``flat``: the run's flattened config)."""
    import mlx.core as mx

    from sweep import __version__

    parts = {
        "model": {k: v for k, v in flat.items() if k.startswith("model.")},
        "weights": _weight_files(model_dir),
        "val": val_digest,
        "subset": subset,
        "settings": {k: flat.get(k) for k in ("seed", "train.batch_size",
                                              "train.max_seq_length", "train.compile",
                                              "lora.use_dora")},
        "versions": [mx.__version__, __version__],
    }
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class BaseScores:
    """One cached base-model score: :meth:`get` it, or :meth:`put` the one computed."""

    def __init__(self, folder: Path, key: str):
        self.path = Path(folder) / f"{key}.json"

    def get(self) -> Optional[Score]:
        try:
            saved = json.loads(self.path.read_text())
            result = Score(float(saved["loss"]), float(saved["se"]),
                           np.array(saved["indexes"], np.int64),
                           np.array(saved["losses"], np.float64),
                           np.array(saved["counts"], np.int64))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        log.info("the base model's validation scores from %s (computed by an earlier trial "
                 "with the same model, data and settings)", self.path)
        return result

    def put(self, result: Score) -> None:
        record = {"loss": result.loss, "se": result.se,
                  "indexes": [int(i) for i in result.indexes],
                  "losses": [float(v) for v in result.losses],
                  "counts": [int(n) for n in result.counts]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(record))
            os.replace(partial, self.path)  # whole or absent, whatever runs beside it
        except OSError as error:  # a cache that cannot be written costs time, not results
            log.warning("could not cache the base model's validation scores in %s: %s",
                        self.path, error)
