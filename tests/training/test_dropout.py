"""LoRA's hashed dropout keeps nn.Dropout's law: the keep rate, the scaling, independent
elements and calls, a mask fixed by the seed, identity in eval mode; apply_lora uses it."""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from sweep.config.schema import LoraConfig
from sweep.training.dropout import HashDropout, keep_mask, random_key
from sweep.training.lora import apply_lora


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keep_rate_and_scale_are_dropouts(p: float) -> None:
    mx.random.seed(0)
    x = mx.ones((4, 128, 576))
    y = np.array(HashDropout(p)(x))
    kept = (y != 0).mean()
    sigma = math.sqrt(p * (1 - p) / y.size)
    assert abs(kept - (1 - p)) < 5 * sigma, kept
    assert np.allclose(y[y != 0], 1 / (1 - p))
    assert abs(y.mean() - 1) < 5 * sigma / (1 - p)


def test_masks_are_independent_across_elements_and_calls() -> None:
    mx.random.seed(0)
    shape = (64, 4096)
    a = np.array(keep_mask(shape, 0.5, random_key()), dtype=float)
    b = np.array(keep_mask(shape, 0.5, random_key()), dtype=float)
    bound = 5 / math.sqrt(a.size)
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound  # call to call
    for lag in (1, 2, 4096):  # neighbours, and the same column of the next row
        r = np.corrcoef(a.ravel()[:-lag], a.ravel()[lag:])[0, 1]
        assert abs(r) < bound, (lag, r)
    rows = a.mean(axis=1)  # no row or column is favoured
    assert abs(rows - 0.5).max() < 5 * math.sqrt(0.25 / shape[1])


def test_the_seed_fixes_the_mask_and_eval_mode_is_identity() -> None:
    x = mx.random.normal((3, 7, 16))
    drop = HashDropout(0.3)
    mx.random.seed(5)
    first = drop(x)
    mx.random.seed(5)
    assert mx.array_equal(first, drop(x)).item()
    assert not mx.array_equal(first, drop(x)).item()
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError, match="dropout"):
        HashDropout(1.0)


def test_gradient_is_the_mask_over_keep() -> None:
    x = mx.random.normal((2, 5, 8))
    drop = HashDropout(0.25)
    mx.random.seed(1)
    y = drop(x)
    mx.random.seed(1)
    grad = mx.grad(lambda v: drop(v).sum())(x)
    assert mx.allclose(grad, (y != 0) / 0.75).item()


def test_apply_lora_uses_it_in_every_lora_layer() -> None:
    from mlx_lm.models import llama

    model = llama.Model(llama.ModelArgs(model_type="llama", hidden_size=16, num_hidden_layers=2,
                                        intermediate_size=32, num_attention_heads=2,
                                        rms_norm_eps=1e-5, vocab_size=50,
                                        num_key_value_heads=2))
    apply_lora(model, LoraConfig(rank=4, dropout=0.05), seed=0)
    drops = [m.dropout for _, m in model.named_modules() if hasattr(m, "lora_a")]
    assert len(drops) == 2 * 7
    assert all(isinstance(d, HashDropout) and d._keep == pytest.approx(0.95) for d in drops)
    assert not any(isinstance(m, nn.Dropout) for _, m in model.named_modules())
