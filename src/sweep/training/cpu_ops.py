"""Attention and SwiGLU written so that MLX can fuse them while training on the CPU.

MLX's CPU backend runs an op that ``mx.compile`` did not fuse with the generic build of
libmlx: ``exp`` one scalar at a time, with a call into libm for each ``fma``. Two ops of
mlx-lm's models land there during a training step:

- ``mx.fast.scaled_dot_product_attention`` falls back to an unfused softmax (14 ms for
  one layer's 4x9x160x160 scores here). Written from matmuls, ``exp`` and sums inside
  the compiled step, the softmax is one fused, vectorised kernel (3 ms; see
  :mod:`sweep.runtime.kernels`).
- ``swiglu`` (``silu(gate) * x``): the backward pass reads the forward's
  ``sigmoid(gate)``, and ``mx.compile`` does not fuse an array that has consumers
  outside the fused group, so the sigmoid ran alone and unvectorised (16 of them per
  step on SmolLM2, ~0.2 s of a 2.3 s step here). :func:`swiglu_recomputed` has a
  backward that recomputes the sigmoid from ``gate``, so forward and backward are each
  fused.

Only the model's own module is patched, only during training, and only on the CPU.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn

__all__ = ["attention_from_basic_ops", "swiglu_recomputed", "fusable_ops_on_cpu"]


def attention_from_basic_ops(queries: mx.array, keys: mx.array, values: mx.array,
                             scale: float, mask) -> mx.array:
    """Grouped-query attention ``softmax(q k^T * scale + mask) v`` from basic ops."""
    batch, heads, length, dim = queries.shape
    kv_heads, source = keys.shape[1], keys.shape[2]
    q = (queries * scale).reshape(batch, kv_heads, heads // kv_heads, length, dim)
    scores = q @ mx.expand_dims(keys, 2).swapaxes(-1, -2)  # B, KV, group, L, S
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask {mask!r}")
        rows = mx.arange(source - length, source)[:, None]
        scores = mx.where(mx.arange(source)[None] <= rows, scores, -mx.inf)
    elif mask is not None:
        mask = mx.expand_dims(mask, 2) if mask.ndim == 4 else mask
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    peak = mx.stop_gradient(scores.max(axis=-1, keepdims=True))
    weights = mx.exp(scores - peak)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    out = weights.astype(values.dtype) @ mx.expand_dims(values, 2)
    return out.reshape(batch, heads, length, dim)


@mx.custom_function
def swiglu_recomputed(gate: mx.array, x: mx.array) -> mx.array:
    """``silu(gate) * x``, as mlx-lm's ``swiglu``, with a backward pass that needs only
    ``gate`` and ``x``."""
    return gate * mx.sigmoid(gate) * x


@swiglu_recomputed.vjp
def _swiglu_vjp(primals, cotangent, output):
    gate, x = primals
    # Not mx.sigmoid(gate): compile would merge it with the forward's sigmoid (same op,
    # same input), which then again has consumers in two fused groups.
    s = 1 / (1 + mx.exp(-gate))
    return cotangent * x * (s * (1 + gate * (1 - s))), cotangent * (gate * s)


def _attention(original):
    def attention(queries, keys, values, cache, scale, mask, sinks=None):
        if cache is not None or sinks is not None:
            return original(queries, keys, values, cache, scale=scale, mask=mask, sinks=sinks)
        return attention_from_basic_ops(queries, keys, values, scale, mask)

    return attention


def _swiglu(original):
    return swiglu_recomputed


_PATCHES = {"scaled_dot_product_attention": _attention, "swiglu": _swiglu}


@contextmanager
def fusable_ops_on_cpu(model: nn.Module) -> Iterator[list]:
    """Swap the model module's attention and ``swiglu`` for the versions above while in
    the block (on the CPU only); yields the names swapped."""
    module = sys.modules.get(type(model).__module__)
    if module is None or mx.default_device().type != mx.DeviceType.cpu:
        yield []
        return
    swapped = []
    with ExitStack() as undo:
        for name, make in _PATCHES.items():
            original = getattr(module, name, None)
            if original is None:
                continue
            setattr(module, name, make(original))
            undo.callback(setattr, module, name, original)
            swapped.append(name)
        yield swapped
