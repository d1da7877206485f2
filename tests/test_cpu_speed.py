"""The CPU fast paths compute what the stock ops compute: attention and cross-entropy
from basic ops, fused kernels built with -march=native, and length-sorted batches."""

from __future__ import annotations

import os
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import pytest

from sweep.training.cpu_attention import attention_from_basic_ops
from sweep.training.loop import token_cross_entropy


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (9, 3), (8, 1)])
@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive", None])
def test_attention_from_basic_ops_matches_mlx(heads, kv_heads, mask_kind) -> None:
    mx.random.seed(0)
    b, length, dim = 2, 7, 16
    q = mx.random.normal((b, heads, length, dim))
    k = mx.random.normal((b, kv_heads, length, dim))
    v = mx.random.normal((b, kv_heads, length, dim))
    mask = {"causal": "causal", None: None,
            "bool": mx.random.uniform(shape=(b, 1, length, length)) > 0.3,
            "additive": mx.random.normal((b, 1, length, length))}[mask_kind]
    if mask_kind == "bool":
        mask = mask | mx.eye(length, dtype=mx.bool_)  # no row without a key
    expected = mx.fast.scaled_dot_product_attention(q, k, v, scale=dim ** -0.5, mask=mask)
    got = attention_from_basic_ops(q, k, v, dim ** -0.5, mask)
    assert mx.allclose(got, expected, atol=1e-5).item()


def test_token_cross_entropy_matches_mlx() -> None:
    logits = mx.random.normal((3, 5, 101)) * 10
    targets = mx.random.randint(0, 101, (3, 5))
    assert mx.allclose(token_cross_entropy(logits, targets),
                       nn.losses.cross_entropy(logits, targets), atol=1e-4).item()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="g++ kernels: Linux CPU")
def test_fused_kernels_are_built_for_this_cpu() -> None:
    from sweep.native_kernels import native_kernels_dir

    base = native_kernels_dir()
    assert base is not None
    assert "-march=native" in (base / "sweep-native-gxx" / "g++").read_text()
    code = ("import sweep, mlx.core as mx, os; "
            "f = mx.compile(lambda x: mx.exp(x * 1.2345) - 0.5); mx.eval(f(mx.ones((64,)))); "
            "print(os.environ['TMPDIR'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    tmp = out.stdout.strip()
    assert tmp.startswith(str(base))
    built = [f for root, _, files in os.walk(tmp) for f in files if f.endswith(".so")]
    assert any("Exp" in f for f in built)


def test_batches_group_similar_lengths() -> None:
    from sweep.data.batches import iterate_batches

    class Fake:
        def __init__(self, lengths):
            self.items = [(list(range(n)), 0) for n in lengths]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    lengths = [5, 90, 7, 88, 6, 91, 8, 89]
    batches = list(iterate_batches(Fake(lengths), 4, 512))
    rows = [sorted(int(b[1]) for b in bounds.tolist()) for _, bounds, _ in batches]
    assert rows == [[5, 6, 7, 8], [88, 89, 90, 91]]
