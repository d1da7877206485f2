"""The statistics shared by training, pruning and evaluation (NumPy only): token-weighted
means with their standard errors, paired differences of two models on the same examples."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["token_weighted", "mean_se", "example_record", "paired_loss_difference"]


def token_weighted(losses, counts) -> Tuple[float, float]:
    """(mean, standard error) of the loss over all tokens, ``losses`` being each
    example's mean loss and ``counts`` its tokens: a ratio estimator, so the standard
    error comes from the delta method, ``sqrt(sum((n_i (l_i - L))^2) / (m (m - 1))) /
    mean(n)`` over the ``m`` examples."""
    losses, counts = np.asarray(losses, float), np.asarray(counts, float)
    m = len(losses)
    if m == 0 or counts.sum() == 0:
        return math.nan, math.nan
    mean = float((losses * counts).sum() / counts.sum())
    if m < 2:
        return mean, math.nan
    residual = counts * (losses - mean)
    se = math.sqrt(float((residual ** 2).sum()) / (m * (m - 1))) / float(counts.mean())
    return mean, se


def mean_se(values) -> Tuple[float, float]:
    """(mean, standard error of the mean) of per-item values."""
    values = np.asarray(values, float)
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(np.mean(values)), se


def example_record(indexes: Sequence[int], losses: Sequence[float],
                   counts: Sequence[int]) -> Dict[str, Any]:
    """Each example's mean loss and answer tokens, by dataset index, as a trial stores
    them (``val@<step>``, compact JSON)."""
    return {"i": [int(i) for i in indexes], "l": [round(float(v), 5) for v in losses],
            "n": [int(n) for n in counts]}


def paired_loss_difference(a: Dict[str, Any], b: Dict[str, Any]) -> Optional[Tuple[float, float]]:
    """(loss of ``a`` - loss of ``b``, its standard error) over the examples both scored,
    token-weighted (the delta method, as :func:`token_weighted`); None when
    they share fewer than 2 examples, or when the same index has different token counts
    (another split, tokenizer or ``max_seq_length``: not the same examples)."""
    common, ia, ib = np.intersect1d(a["i"], b["i"], return_indices=True)
    if len(common) < 2:
        return None
    na, nb = np.asarray(a["n"], float)[ia], np.asarray(b["n"], float)[ib]
    if not np.array_equal(na, nb):
        return None
    la, lb = np.asarray(a["l"], float)[ia], np.asarray(b["l"], float)[ib]
    return token_weighted(la - lb, na)
