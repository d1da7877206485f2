"""The loss functions, one definition each: the per-token cross-entropy (with its backward
pass written out), the training loss (the mean over answer tokens of a batch) and the
evaluation loss (each row's sum, so examples can be scored one by one). The training loop
and scoring both import them from here."""

from __future__ import annotations

from typing import Callable, Tuple

import mlx.core as mx
import mlx.nn as nn

__all__ = ["Loss", "ExampleLoss", "token_cross_entropy", "answer_mask", "masked_cross_entropy",
           "example_losses"]

# (model, tokens, bounds) -> (loss, target tokens): the training loss
Loss = Callable[[nn.Module, mx.array, mx.array], Tuple[mx.array, mx.array]]
# (model, tokens, bounds) -> (each row's summed loss, each row's target tokens)
ExampleLoss = Callable[[nn.Module, mx.array, mx.array], Tuple[mx.array, mx.array]]


@mx.custom_function
def _cross_entropy_and_lse(logits: mx.array, targets: mx.array):
    peak = mx.stop_gradient(logits.max(axis=-1, keepdims=True))
    lse = mx.log(mx.exp(logits - peak).sum(axis=-1)) + peak.squeeze(-1)
    return lse - mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1), lse


@_cross_entropy_and_lse.vjp
def _cross_entropy_vjp(primals, cotangents, outputs):
    logits, targets = primals
    vocab = mx.arange(logits.shape[-1], dtype=targets.dtype)
    softmax = mx.exp(logits - outputs[1][..., None])
    grad = (softmax - (vocab == targets[..., None])) * cotangents[0][..., None]
    return grad.astype(logits.dtype), mx.zeros_like(targets)


def token_cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """Per-token cross-entropy from basic ops (max, exp, sum, log), so that inside a
    compiled step its ``exp`` over the whole vocabulary lands in one fused kernel.

    Its backward pass is written out: ``(softmax - one_hot) * g`` from the logits and
    the log-normaliser in one fused kernel. Autodiff's version keeps the forward's
    ``exp`` array alive and makes a few more vocabulary-sized ones: at 4 x 512 tokens
    and a 49k vocabulary each is 400 MB.
    """
    return _cross_entropy_and_lse(logits.astype(mx.float32), targets)[0]


def answer_mask(tokens: mx.array, bounds: mx.array) -> Tuple[mx.array, mx.array, mx.array]:
    """(inputs, targets, mask): next-token pairs of each row and the positions
    ``offset <= p < length`` that count (the answer, when the prompt is masked)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    position = mx.arange(1, targets.shape[1] + 1)
    mask = (position >= bounds[:, 0:1]) & (position < bounds[:, 1:2])
    return inputs, targets, mask


def masked_cross_entropy(model: nn.Module, tokens: mx.array, bounds: mx.array):
    """Mean next-token cross-entropy over the counted positions of the batch (see
    :func:`answer_mask`); returns (loss, number of target tokens)."""
    inputs, targets, mask = answer_mask(tokens, bounds)
    ce = token_cross_entropy(model(inputs), targets) * mask
    count = mx.maximum(mask.sum(), 1)
    return ce.sum() / count, count


def example_losses(model: nn.Module, tokens: mx.array, bounds: mx.array):
    """Per row: the summed next-token cross-entropy over the counted positions and the
    number of those positions."""
    inputs, targets, mask = answer_mask(tokens, bounds)
    ce = token_cross_entropy(model(inputs), targets) * mask
    return ce.sum(axis=1), mask.sum(axis=1)
