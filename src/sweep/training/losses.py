"""The loss functions, one definition each: the per-token cross-entropy (with its backward
pass written out), the training loss (the mean over answer tokens of a batch) and the
evaluation loss (each row's sum, so examples can be scored one by one). The training loop
and scoring both import them from here. Both take the batch's counted positions (flat
indexes of its next-token targets, :func:`sweep.data.batches.answer_positions`) and
compute logits at those alone."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import mlx.core as mx
import mlx.nn as nn

from sweep.training.heads import Split

__all__ = ["Loss", "ExampleLoss", "token_cross_entropy", "masked_cross_entropy",
           "example_losses"]

# (model, tokens, positions, *, split) -> (loss, target tokens): the training loss
Loss = Callable[..., Tuple[mx.array, mx.array]]
# (model, tokens, positions, *, split) -> (each row's summed loss, each row's target tokens)
ExampleLoss = Callable[..., Tuple[mx.array, mx.array]]


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


def _logits_at(model: nn.Module, inputs: mx.array, flat: mx.array,
               split: Optional[Split]) -> mx.array:
    """Logits ``[N, V]`` at the flat positions of ``inputs``: the head run at those alone
    when the model splits (:mod:`sweep.training.heads`), else gathered from all logits."""
    if split is None:
        logits = model(inputs)
        return logits.reshape(-1, logits.shape[-1])[flat]
    hidden = split.body(inputs)
    return split.head(hidden.reshape(-1, hidden.shape[-1])[flat])


def _counted(model: nn.Module, tokens: mx.array, positions: mx.array,
             split: Optional[Split]) -> Tuple[mx.array, mx.array, mx.array]:
    """(cross-entropy [N], counts [N] (0 at padding), flat positions [N])."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    valid = positions >= 0
    flat = mx.maximum(positions, 0)
    ce = token_cross_entropy(_logits_at(model, inputs, flat, split), targets.reshape(-1)[flat])
    return ce * valid, valid, flat


def masked_cross_entropy(model: nn.Module, tokens: mx.array, positions: mx.array, *,
                         split: Optional[Split] = None):
    """Mean next-token cross-entropy over the counted positions of the batch (``positions``:
    :func:`sweep.data.batches.answer_positions`); returns (loss, number of target tokens).
    With ``split``, the LM head runs at the counted positions only."""
    ce, valid, _ = _counted(model, tokens, positions, split)
    count = mx.maximum(valid.sum(), 1)
    return ce.sum() / count, count


def example_losses(model: nn.Module, tokens: mx.array, positions: mx.array, *,
                   split: Optional[Split] = None):
    """Per row: the summed next-token cross-entropy over the counted positions and the
    number of those positions."""
    ce, valid, flat = _counted(model, tokens, positions, split)
    rows = (flat // (tokens.shape[1] - 1))[None, :] == mx.arange(tokens.shape[0])[:, None]
    rows = rows & valid[None, :]  # [B, N]: position n belongs to row b
    return (rows * ce[None, :]).sum(axis=1), rows.sum(axis=1)
