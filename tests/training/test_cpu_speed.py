"""The CPU fast paths compute what the stock ops compute and do what they are there for:
attention, SwiGLU and cross-entropy in fusable form, fused kernels built for this CPU
(vectorised ``exp``), a heap that keeps freed buffers, and length-sorted batches."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import mlx.core as mx
import numpy as np
import mlx.nn as nn
import pytest

from sweep.training.cpu_ops import (attention_from_basic_ops, fusable_ops_on_cpu,
                                    swiglu_recomputed)
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


def test_swiglu_recomputed_matches_mlx_lm_values_and_gradients() -> None:
    from mlx_lm.models.activations import swiglu

    mx.random.seed(1)
    gate = mx.concatenate([mx.random.normal((64, 33)) * 4, mx.array([[-100.0, -30, 0, 30, 100]
                                                                      * 6 + [1, 2, 3]])])
    x = mx.random.normal(gate.shape)
    weights = mx.random.normal(gate.shape)

    def loss(fn):
        return lambda g, v: (fn(g, v) * weights).sum()

    assert mx.allclose(swiglu_recomputed(gate, x), swiglu(gate, x), atol=1e-5).item()
    expected = mx.grad(loss(swiglu), argnums=(0, 1))(gate, x)
    for compiled in (False, True):
        grad = mx.grad(loss(swiglu_recomputed), argnums=(0, 1))
        got = (mx.compile(grad) if compiled else grad)(gate, x)
        for a, b in zip(got, expected):
            assert mx.allclose(a, b, atol=1e-4, rtol=1e-4).item()


def _primitives(*outputs: mx.array, path) -> list:
    mx.export_to_dot(str(path), *outputs)
    return re.findall(r'label ="([A-Za-z]+)"', path.read_text())


def test_swiglu_recomputed_leaves_no_sigmoid_outside_fused_kernels(tmp_path) -> None:
    """mlx-lm's swiglu leaves a lone Sigmoid (its output is read by the backward pass,
    so compile cannot fuse it); the recomputing one must not."""
    from mlx_lm.models.activations import swiglu

    w1, w2 = mx.random.normal((48, 16)), mx.random.normal((48, 16))
    w3, h = mx.random.normal((16, 48)), mx.random.normal((10, 16))

    def step(fn):
        f = lambda h: (fn(h @ w1.T, h @ w2.T) @ w3.T).square().sum()  # noqa: E731
        return mx.compile(mx.value_and_grad(f))(h)

    assert "Sigmoid" in _primitives(*step(swiglu), path=tmp_path / "stock.dot")
    assert "Sigmoid" not in _primitives(*step(swiglu_recomputed), path=tmp_path / "ours.dot")


def test_fusable_ops_are_swapped_in_the_model_module_and_restored() -> None:
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs(model_type="llama", hidden_size=16, num_hidden_layers=1,
                                        intermediate_size=32, num_attention_heads=2,
                                        rms_norm_eps=1e-5, vocab_size=50,
                                        num_key_value_heads=2))
    stock = (llama.swiglu, llama.scaled_dot_product_attention)
    with fusable_ops_on_cpu(model) as swapped:
        assert swapped == ["scaled_dot_product_attention", "swiglu"]
        assert llama.swiglu is swiglu_recomputed
        assert llama.scaled_dot_product_attention is not stock[1]
    assert (llama.swiglu, llama.scaled_dot_product_attention) == stock


def test_token_cross_entropy_matches_mlx() -> None:
    logits = mx.random.normal((3, 5, 101)) * 10
    targets = mx.random.randint(0, 101, (3, 5))
    assert mx.allclose(token_cross_entropy(logits, targets),
                       nn.losses.cross_entropy(logits, targets), atol=1e-4).item()
    weights = mx.random.normal(targets.shape)  # its hand-written backward pass
    grads = [mx.grad(lambda x: (fn(x, targets) * weights).sum())(logits)
             for fn in (token_cross_entropy, nn.losses.cross_entropy)]
    assert mx.allclose(*grads, atol=1e-5).item()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="g++ kernels: Linux CPU")
def test_fused_kernels_are_built_for_this_cpu() -> None:
    from sweep.runtime.kernels import native_kernels_dir

    base = native_kernels_dir()
    assert base is not None
    assert "-march=native" in (base / "sweep-native-gxx" / "g++").read_text()
    # a fresh process (its env: os.environ, which setup() leaves alone) sets itself up
    code = ("import sweep.runtime; kernels = sweep.runtime.setup().kernels_dir; "
            "import mlx.core as mx; "
            "f = mx.compile(lambda x: mx.exp(x * 1.2345) - 0.5); mx.eval(f(mx.ones((64,)))); "
            "print(kernels)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(base)
    tmp = base / "tmp"  # MLX's TMPDIR there
    built = [os.path.join(root, f) for root, _, files in os.walk(tmp) for f in files
             if f.endswith(".so") and "Exp" in f]
    assert built
    # MLX's exp polynomial inlined into the loop (so GCC can vectorise it), not called
    # once per element as an out-of-line simd::exp<float, 1>.
    symbols = subprocess.run(["nm", "-C", built[0]], capture_output=True, text=True).stdout
    assert "simd::exp" not in symbols, symbols


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_arrays_are_reused_without_page_faults() -> None:
    """A few MLP blocks forward and backward (arrays of 1.5-4 MB): with glibc's defaults
    each step maps fresh pages again (thousands to tens of thousands of faults, by machine:
    12,809 on CI's, 25,000+ on ours); with sweep's heap settings the steps after the first
    reuse them."""
    code = ("import resource, sweep.runtime; sweep.runtime.setup(); import mlx.core as mx\n"
            "from sweep.training.cpu_ops import swiglu_recomputed\n"
            "w = [mx.random.normal(s) * 0.02 for s in ((1536, 576), (1536, 576), (576, 1536))]\n"
            "h = mx.random.normal((640, 576)); mx.eval(w, h)\n"
            "def f(h):\n"
            "    for _ in range(4):\n"
            "        h = h + swiglu_recomputed(h @ w[0].T, h @ w[1].T) @ w[2].T\n"
            "    return h.square().sum()\n"
            "g = mx.compile(mx.value_and_grad(f))\n"
            "for i in range(6):\n"
            "    if i == 2: start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    mx.eval(g(h))\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)")
    faults = {}
    for tuning in ("1", "0"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "SWEEP_MALLOC_TUNING": tuning})
        assert out.returncode == 0, out.stderr
        faults[tuning] = int(out.stdout.strip().splitlines()[-1])
    assert faults["0"] > 2000, faults  # the control: glibc's defaults do fault
    assert faults["1"] < faults["0"] / 20, faults


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
    rows = [sorted(int((np.array(tokens[r]) > 0).sum()) + 1 for r in range(4))
            for tokens, _, _ in batches]  # each example's tokens are 0, 1, .., n - 1
    assert rows == [[5, 6, 7, 8], [88, 89, 90, 91]]
