"""The model's body and its LM head, apart, so the loss can run the head only where it counts.

With the prompt masked, about half of a batch's positions are prompt or padding (the shipped
data: 49% of the real positions are answer tokens, and padding adds ~15%), and the LM head
over SmolLM2's 49,152-token vocabulary is ~21% of the forward pass's multiply-adds, with a
cross-entropy over the whole vocabulary after it, forward and backward. Gathering the hidden
states at the counted positions first and running the head on those alone does the same
arithmetic for them and none for the rest: it helps every backend (CPU, Metal, CUDA).

This is the one place that reaches inside a model: mlx-lm's models are written as
``logits = head(model.model(inputs))``, the head being ``model.lm_head`` or, with tied
embeddings, ``model.model.embed_tokens.as_linear``. Models that do more after the body (a
logit scale, a soft cap) do not fit, so :func:`split_head` checks on a probe that the two
halves reproduce ``model(inputs)`` and returns None otherwise: the loss then computes all
logits, as before. ``tests/training/test_heads.py`` fails if an mlx-lm upgrade changes the
layout for the models we ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn

__all__ = ["Split", "split_head"]

PROBE = [[1, 2, 3, 4, 5, 6, 7, 8]]


@dataclass(frozen=True)
class Split:
    body: Callable[[mx.array], mx.array]  # inputs [B, T] -> hidden states [B, T, D]
    head: Callable[[mx.array], mx.array]  # hidden states [..., D] -> logits [..., V]


def split_head(model: nn.Module) -> Optional[Split]:
    """The model's body and head if ``head(body(x))`` is ``model(x)``, else None."""
    body = getattr(model, "model", None)
    if not isinstance(body, nn.Module):
        return None
    head = getattr(model, "lm_head", None)
    if head is None:
        embed = getattr(body, "embed_tokens", None)
        head = getattr(embed, "as_linear", None)
    if head is None:
        return None
    split = Split(body, head)
    return split if _reproduces(model, split) else None


def _reproduces(model: nn.Module, split: Split) -> bool:
    was_training = model.training
    model.eval()  # no dropout: both computations must see the same weights
    try:
        probe = mx.array(PROBE)
        whole = model(probe)
        apart = split.head(split.body(probe))
        if not isinstance(whole, mx.array) or whole.shape != apart.shape:
            return False
        scale = mx.abs(whole).max() + 1
        return bool(mx.all(mx.abs(whole - apart) <= 1e-5 * scale).item())
    except Exception:  # a body that needs more than the tokens: not the layout we know
        return False
    finally:
        model.train(was_training)
