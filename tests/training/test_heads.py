"""Answer-only logits: the LM head run at the counted positions alone gives the same loss
and gradients as the full computation (and as mlx-lm's ``default_loss``), and models
whose head is not ``head(model.model(x))`` fall back to all logits."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from sweep.config.schema import LoraConfig
from sweep.data.batches import PAD_MULTIPLE, answer_positions
from sweep.training.heads import split_head
from sweep.training.lora import apply_lora
from sweep.training.losses import example_losses, masked_cross_entropy


def llama(tied: bool, vocab: int = 97):
    from mlx_lm.models import llama

    mx.random.seed(0)
    return llama.Model(llama.ModelArgs(
        model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=vocab,
        tie_word_embeddings=tied))


def qwen2():
    from mlx_lm.models import qwen2

    mx.random.seed(0)
    return qwen2.Model(qwen2.ModelArgs(
        model_type="qwen2", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, vocab_size=97,
        tie_word_embeddings=True))


def batch(vocab: int = 97):
    """Three rows of different lengths and prompt offsets, one empty (a padded eval row)."""
    bounds = np.array([[3, 17], [6, 9], [0, 0]], np.int32)
    tokens = np.zeros((3, 18), np.int32)
    rng = np.random.default_rng(0)
    for r, (_, n) in enumerate(bounds):
        tokens[r, :n] = rng.integers(1, vocab, n)
    return mx.array(tokens), mx.array(answer_positions(bounds, 18)), bounds


def test_answer_positions_are_each_rows_answer_targets() -> None:
    bounds = np.array([[3, 17], [6, 9], [0, 0]])
    positions = answer_positions(bounds, 18)
    counted = positions[positions >= 0].tolist()
    # row 0 predicts tokens 3..16 (targets 2..15); row 1 tokens 6..8 (targets 17*1 + 5..7)
    assert counted == list(range(2, 16)) + [22, 23, 24]
    assert len(positions) % PAD_MULTIPLE == 0 and (positions[len(counted):] == -1).all()
    position = np.arange(1, 18)  # the mask the loss meant before: offset <= p < length
    mask = (position >= bounds[:, :1]) & (position < bounds[:, 1:])
    assert counted == np.flatnonzero(mask).tolist()


@pytest.mark.parametrize("make", [lambda: llama(True), lambda: llama(False), qwen2],
                         ids=["llama-tied", "llama-untied", "qwen2-tied"])
def test_answer_only_logits_give_the_same_loss_and_gradients(make) -> None:
    from mlx_lm.tuner.trainer import default_loss

    model = make()
    apply_lora(model, LoraConfig(rank=4, dropout=0.0, keys=None), seed=0)
    for _, p in tree_flatten(model.trainable_parameters()):  # B != 0: gradients reach A too
        p += 0.1 * mx.random.normal(p.shape)
    split = split_head(model)
    assert split is not None
    tokens, positions, bounds = batch()
    grad = nn.value_and_grad(model, masked_cross_entropy)
    (full, n), full_grads = grad(model, tokens, positions)
    (fast, m), fast_grads = nn.value_and_grad(
        model, lambda *a: masked_cross_entropy(*a, split=split))(model, tokens, positions)
    # mlx-lm counts offset <= p <= its length: its length is our last counted position
    lengths = mx.array(np.stack([bounds[:, 0], np.maximum(bounds[:, 1] - 1, 0)], 1))
    (ref, k), ref_grads = nn.value_and_grad(model, default_loss)(model, tokens, lengths)
    assert n.item() == m.item() == k.item() == 17
    assert abs(fast.item() - full.item()) < 1e-5 and abs(full.item() - ref.item()) < 1e-5
    for (name, a), (_, b), (_, c) in zip(tree_flatten(fast_grads), tree_flatten(full_grads),
                                         tree_flatten(ref_grads)):
        assert mx.allclose(a, b, atol=1e-5).item(), name
        assert mx.allclose(b, c, atol=1e-4).item(), name
    sums, counts = example_losses(model, tokens, positions, split=split)
    full_sums, full_counts = example_losses(model, tokens, positions)
    assert counts.tolist() == full_counts.tolist() == [14, 3, 0]
    assert mx.allclose(sums, full_sums, atol=1e-4).item()
    assert abs(sums.sum().item() / 17 - full.item()) < 1e-5


def test_a_model_with_more_after_the_body_falls_back_to_all_logits() -> None:
    model = llama(True)

    class Scaled(type(model)):  # a logit scale (as Cohere's or Granite's models have)
        def __call__(self, inputs, cache=None, input_embeddings=None):
            return super().__call__(inputs, cache, input_embeddings) * 0.5

    model.__class__ = Scaled
    assert split_head(model) is None
    tokens, positions, _ = batch()
    loss, n = masked_cross_entropy(model, tokens, positions, split=None)
    assert n.item() == 17 and np.isfinite(loss.item())


def test_split_probe_leaves_the_training_mode_alone() -> None:
    model = llama(True)
    model.train()
    assert split_head(model) is not None and model.training
    model.eval()
    assert split_head(model) is not None and not model.training
