"""The loop on a tiny model: schedules, optimizers, seeded LoRA init, accumulation,
clipping, non-finite losses, events, and the best adapter by validation loss."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from sweep.config.schema import (LoraConfig, ModelConfig, ModelSource, OptimizerConfig,
                                 OptimizerName, SchedulerConfig, SchedulerName)
from sweep.data.batches import tokenize
from sweep.models.loader import load_base
from sweep.training.events import CheckpointReport, EvalReport, Listener, TrainReport
from sweep.training.lora import apply_lora, save_adapter
from sweep.training.loop import LoopSettings, NonFiniteLossError, evaluate, train
from sweep.training.optim import build_optimizer, build_schedule

TINY = ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny", quantize=False)


def example(i: int):
    return {"messages": [{"role": "user", "content": f"What is article {i % 5}?"},
                         {"role": "assistant", "content": f"Article {i % 5} is about topic {i % 5}."}]}


@pytest.fixture
def tiny():
    return load_base(TINY, seed=0)


def datasets(tokenizer, n_train=24, n_valid=8, same=False):
    pick = (lambda i: example(0)) if same else example
    return (tokenize([pick(i) for i in range(n_train)], tokenizer, True),
            tokenize([pick(i + 100) for i in range(n_valid)], tokenizer, True))


def settings(**kw) -> LoopSettings:
    base = dict(iters=8, batch_size=4, grad_accumulation=2, max_seq_length=128,
                max_grad_norm=None, eval_every=2, val_batches=-1, compile=True, seed=0)
    base.update(kw)
    return LoopSettings(**base)


class Recorder(Listener):
    def __init__(self):
        self.train: List[TrainReport] = []
        self.evals: List[EvalReport] = []
        self.checkpoints: List[CheckpointReport] = []

    def on_train_report(self, r): self.train.append(r)
    def on_eval_report(self, r): self.evals.append(r)
    def on_checkpoint(self, r): self.checkpoints.append(r)


@pytest.mark.parametrize(
    "name,warmup,step,expected",
    [
        ("cosine", 2, 0, 1 / 3), ("cosine", 2, 1, 2 / 3), ("cosine", 2, 2, 1.0),
        ("cosine", 2, 9, 0.1), ("cosine", 0, 0, 1.0), ("cosine", 0, 9, 0.1),
        ("linear", 0, 9, 0.1), ("linear", 1, 5, 1.0 - 0.9 * 4 / 8),
        ("constant", 0, 9, 1.0), ("constant", 3, 1, 2 / 4),
    ],
)
def test_schedule_warmup_then_decay(name, warmup, step, expected) -> None:
    cfg = SchedulerConfig(name=SchedulerName(name), warmup_steps=warmup, min_lr_ratio=0.1)
    if name == "constant":
        cfg = SchedulerConfig(name=SchedulerName.constant, warmup_steps=warmup, min_lr_ratio=1.0)
    lr = build_schedule(cfg, 1.0, total_steps=10)(mx.array(step)).item()
    assert lr == pytest.approx(expected, abs=1e-6)


def test_warmup_ratio_counts_optimizer_steps() -> None:
    schedule = build_schedule(SchedulerConfig(warmup_ratio=0.1), 1.0, total_steps=100)
    assert schedule(mx.array(4)).item() == pytest.approx(5 / 11)
    assert schedule(mx.array(10)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", list(OptimizerName))
def test_every_optimizer_trains(tiny, name) -> None:
    model = tiny.model
    apply_lora(model, LoraConfig(rank=4), seed=0)
    cfg = OptimizerConfig(name=name, lr=1e-2, weight_decay=0.0)
    optimizer = build_optimizer(cfg, build_schedule(SchedulerConfig(), cfg.lr, 4))
    train_set, val_set = datasets(tiny.tokenizer)
    result = train(model, optimizer, train_set, val_set, settings(iters=4))
    assert math.isfinite(result.best_val_loss) and result.steps == 2


def test_adam_with_weight_decay_is_refused() -> None:
    from sweep.config.schema import ConfigError

    with pytest.raises(ConfigError, match="optimizer.weight_decay"):
        build_optimizer(OptimizerConfig(name=OptimizerName.adam, weight_decay=0.1), lambda s: 1.0)


def test_same_seed_same_lora_init(tiny) -> None:
    def init(seed):
        load_base(TINY, seed=0)  # strips the previous adapters
        apply_lora(tiny.model, LoraConfig(rank=4), seed=seed)
        return {k: v for k, v in tree_flatten(tiny.model.trainable_parameters())}

    a, b, c = init(1), init(1), init(2)
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not all(mx.array_equal(a[k], c[k]).item() for k in a if k.endswith("lora_a"))


def trained_weights(tiny, **kw):
    load_base(TINY, seed=0)
    apply_lora(tiny.model, LoraConfig(rank=4, dropout=0.0), seed=0)
    optimizer = build_optimizer(OptimizerConfig(name=OptimizerName.sgd, lr=0.5, weight_decay=0.0),
                                build_schedule(SchedulerConfig(name=SchedulerName.constant,
                                                               min_lr_ratio=1.0), 0.5, 1))
    train_set, val_set = datasets(tiny.tokenizer, same=True)
    train(tiny.model, optimizer, train_set, val_set, settings(**kw))
    return dict(tree_flatten(tiny.model.trainable_parameters()))


def test_accumulation_matches_a_larger_batch(tiny) -> None:
    # identical examples: 2 micro-batches of 2 == 1 batch of 4, one optimizer step each
    a = trained_weights(tiny, iters=2, batch_size=2, grad_accumulation=2)
    b = trained_weights(tiny, iters=1, batch_size=4, grad_accumulation=1)
    assert all(mx.allclose(a[k], b[k], atol=1e-5).item() for k in a)
    start = trained_weights(tiny, iters=1, batch_size=4, grad_accumulation=1, compile=False)
    assert all(mx.allclose(b[k], start[k], atol=1e-5).item() for k in a)


def test_gradient_checkpointing_changes_nothing_but_memory(tiny) -> None:
    a = trained_weights(tiny, iters=2, batch_size=2, grad_accumulation=2, grad_checkpoint=True)
    b = trained_weights(tiny, iters=2, batch_size=2, grad_accumulation=2)
    assert all(mx.allclose(a[k], b[k], atol=1e-6).item() for k in a)
    assert "checkpoint" not in type(tiny.model.layers[0]).__call__.__qualname__


def test_clipping_bounds_the_update(tiny) -> None:
    load_base(TINY, seed=0)
    apply_lora(tiny.model, LoraConfig(rank=4, dropout=0.0), seed=0)
    before = dict(tree_flatten(tiny.model.trainable_parameters()))
    optimizer = build_optimizer(OptimizerConfig(name=OptimizerName.sgd, lr=1.0, weight_decay=0.0),
                                lambda step: mx.array(1.0))
    recorder = Recorder()
    train_set, val_set = datasets(tiny.tokenizer)
    train(tiny.model, optimizer, train_set, val_set,
          settings(iters=1, grad_accumulation=1, max_grad_norm=1e-3), listener=recorder)
    after = dict(tree_flatten(tiny.model.trainable_parameters()))
    moved = math.sqrt(sum(((after[k] - before[k]) ** 2).sum().item() for k in after))
    assert recorder.train[0].grad_norm > 1e-3  # reported before clipping
    assert moved == pytest.approx(1e-3, rel=1e-3)


def test_non_finite_loss_stops_the_trial(tiny) -> None:
    apply_lora(tiny.model, LoraConfig(rank=4), seed=0)
    optimizer = build_optimizer(OptimizerConfig(), lambda s: mx.array(1e-3))
    train_set, val_set = datasets(tiny.tokenizer)

    def nan_after_eval(model, tokens, positions, split=None):
        return mx.array(float("nan")) * model(tokens[:, :1]).sum(), mx.array(1)

    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        train(tiny.model, optimizer, train_set, val_set, settings(), loss=nan_after_eval)


def test_events_and_the_best_adapter_is_kept(tiny, tmp_path: Path) -> None:
    model = tiny.model
    config = apply_lora(model, LoraConfig(rank=8, alpha=64, dropout=0.0), seed=0)
    # a sane learning rate, then one far too high: validation loss falls, then climbs
    optimizer = build_optimizer(OptimizerConfig(lr=0.01, weight_decay=0.0),
                                lambda s: mx.where(s < 8, 0.01, 1.0))
    train_set, val_set = datasets(tiny.tokenizer)
    recorder = Recorder()
    result = train(model, optimizer, train_set, val_set,
                   settings(iters=12, grad_accumulation=1, eval_every=1),
                   listener=recorder,
                   save_adapter=lambda name: save_adapter(model, config, tmp_path / name))
    losses = [e.val_loss for e in recorder.evals]
    assert [e.step for e in recorder.evals] == list(range(0, 13))
    assert [r.step for r in recorder.train] == list(range(1, 13))
    assert result.best_val_loss == min(losses)
    assert recorder.evals[-1].val_loss == result.best_val_loss  # the objective, logged last
    assert recorder.evals[-1].last_val_loss > result.best_val_loss  # the last weights
    # one checkpoint per improvement, then the final choice (on the whole split)
    assert [c.step for c in recorder.checkpoints[:-1]] == \
        [e.step for e in recorder.evals if e.is_best and not e.final]
    best_eval = min(recorder.evals[:-1], key=lambda e: e.val_loss)
    assert recorder.checkpoints[-1].step == result.best_step == best_eval.step < 12
    assert recorder.evals[-1].final and recorder.evals[-1].whole_split
    model.load_weights(str(tmp_path / "best" / "adapters.safetensors"), strict=False)
    assert evaluate(model, val_set, settings()) == pytest.approx(result.best_val_loss, abs=1e-5)


def test_training_lowers_validation_loss(tiny) -> None:
    apply_lora(tiny.model, LoraConfig(rank=8, alpha=16, dropout=0.0), seed=0)
    optimizer = build_optimizer(OptimizerConfig(lr=1e-2), lambda s: mx.array(1e-2))
    recorder = Recorder()
    train_set, val_set = datasets(tiny.tokenizer)
    train(tiny.model, optimizer, train_set, val_set, settings(iters=16), listener=recorder)
    assert recorder.evals[-1].val_loss < recorder.evals[0].val_loss - 0.5
    assert recorder.evals[-1].val_ppl == pytest.approx(math.exp(recorder.evals[-1].val_loss))
