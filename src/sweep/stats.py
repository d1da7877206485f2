"""Small statistics shared by training, pruning and evaluation (NumPy only)."""

from __future__ import annotations

import math
from typing import Tuple

import numpy as np

__all__ = ["token_weighted"]


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
