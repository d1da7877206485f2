"""Validation and test loss per example: the token-weighted mean over answer tokens, and
its standard error over examples.

A trial's objective must be above the noise of the examples it is measured on, so every
evaluation keeps each example's loss: the final value covers the whole split and carries
``val_loss_se``, and the pruner compares trials example by example
(:mod:`sweep.study.pruning`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from sweep.data.batches import eval_batches
from sweep.training.heads import split_head
from sweep.training.losses import ExampleLoss, example_losses
from sweep.stats import token_weighted

__all__ = ["Score", "example_losses", "score", "token_weighted"]

@dataclass(frozen=True)
class Score:
    """One evaluation: the examples scored (dataset indexes) with their mean losses and
    answer-token counts, and the token-weighted loss with its standard error."""

    loss: float
    se: float
    indexes: np.ndarray
    losses: np.ndarray  # mean loss of each example
    counts: np.ndarray  # answer tokens of each example

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def n_examples(self) -> int:
        return len(self.indexes)


def score(model: nn.Module, dataset, batch_size: int, max_seq_length: int,
          max_batches: int = -1, loss: ExampleLoss = example_losses,
          compiled: Optional[Callable] = None) -> Score:
    """Every example's loss (or the first ``max_batches`` batches' examples, the same ones
    every time). Examples with no answer token left are not counted."""
    was_training = model.training
    model.eval()
    compiled = compiled or mx.compile(partial(loss, model, split=split_head(model)),
                                      inputs=[model.state])
    indexes, sums, counts = [], [], []
    for tokens, positions, rows in eval_batches(dataset, batch_size, max_seq_length,
                                                max_batches):
        total, n = compiled(tokens, positions)
        mx.eval(total, n)
        keep = rows >= 0
        indexes.append(rows[keep])
        sums.append(np.array(total)[keep])
        counts.append(np.array(n)[keep])
    if was_training:
        model.train()
    index = np.concatenate(indexes) if indexes else np.zeros(0, np.int64)
    total = np.concatenate(sums) if sums else np.zeros(0)
    count = np.concatenate(counts) if counts else np.zeros(0)
    order = np.argsort(index)
    index, total, count = index[order], total[order].astype(float), count[order].astype(float)
    scored = count > 0
    index, total, count = index[scored], total[scored], count[scored]
    per_example = total / count
    mean, se = token_weighted(per_example, count)
    return Score(mean, se, index, per_example, count)
