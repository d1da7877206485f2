"""The LoRA training loop: gradient accumulation, clipping, schedule, evaluation, and
the best adapter by validation loss. It reports through listeners and imports no tracker.

Shaped like mlx-lm's ``tuner.trainer.train`` (collaborators passed in), which this does
not call because it keeps the last adapter rather than the best, has no clipping or
gradient norm, and evaluates on a different random subset each time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

from sweep.data.batches import iterate_batches
from sweep.training.checkpoint import Checkpoint, Checkpoints
from sweep.training.interrupt import DeferredStop
from sweep.training.progress import (Progress, dropout_seed, restore, save_due,
                                     stop_if_asked)
from sweep.testing.faults import point
from sweep.training.cpu_ops import fusable_ops_on_cpu
from sweep.training.heads import split_head
from sweep.training.events import (CheckpointReport, Listener, TrainReport,
                                   TrainResult)
from sweep.training.losses import (ExampleLoss, Loss, example_losses, masked_cross_entropy,
                                   token_cross_entropy)
from sweep.training.scoring import score
from sweep.training.validation import (CollapsedError, NonFiniteLossError, Validation,
                                       check_not_dead, vocab_size)

__all__ = ["LoopSettings", "NonFiniteLossError", "CollapsedError", "token_cross_entropy",
           "masked_cross_entropy", "evaluate", "train"]

@dataclass(frozen=True)
class LoopSettings:
    iters: int  # micro-batches
    batch_size: int
    grad_accumulation: int
    max_seq_length: int
    max_grad_norm: float | None
    eval_every: int  # optimizer steps
    val_batches: int  # -1 = all
    eval_every_iters: int | None = None  # micro-batches; overrides eval_every
    save_every: int = 0  # optimizer steps between checkpoints, 0 = off
    save_every_seconds: float = 0.0  # and/or seconds (at the next optimizer step), 0 = off
    early_stop_patience: int = 0  # evaluations without improvement before stopping, 0 = off
    report_every: int = 1
    compile: bool = True
    grad_checkpoint: bool = False  # recompute each block in the backward pass
    seed: int = 0
    stop_at: Optional[int] = None  # micro-batch to stop at, checkpointed (the schedule stays over iters)

    @property
    def total_steps(self) -> int:
        return math.ceil(self.iters / self.grad_accumulation)


def evaluate(model: nn.Module, dataset, settings: LoopSettings,
             loss: ExampleLoss = example_losses, compiled: Callable | None = None) -> float:
    """Token-weighted mean loss over the same ``val_batches`` batches every time (all of
    the split with -1); :func:`sweep.training.scoring.score` keeps each example's."""
    return score(model, dataset, settings.batch_size, settings.max_seq_length,
                 settings.val_batches, loss, compiled).loss


def _global_norm(grads) -> mx.array:
    return mx.sqrt(sum(mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(grads)))


def train(
    model: nn.Module,
    optimizer: optim.Optimizer,
    train_set,
    val_set,
    settings: LoopSettings,
    *,
    listener: Listener = Listener(),
    save_adapter: Callable[[str], Path] = lambda name: Path(name),
    loss: Loss = masked_cross_entropy,
    eval_loss: ExampleLoss = example_losses,
    checkpoints: Optional[Checkpoints] = None,
    resume: Optional[Checkpoint] = None,
    base_scores=None,
) -> TrainResult:
    """Train the model's trainable (LoRA) parameters; returns the best validation loss
    over the whole validation split (:class:`~sweep.training.validation.Validation`).
    A collapsed model raises :class:`CollapsedError`, a NaN or infinite loss
    :class:`NonFiniteLossError`.

    ``save_adapter("best")`` writes the best adapter so far and returns its folder.
    ``checkpoints`` (if given) receives the whole training state every ``save_every``
    optimizer steps and/or ``save_every_seconds``, and on SIGTERM or Ctrl-C before the
    run stops; ``resume`` (a :class:`~sweep.training.checkpoint.Checkpoint`) continues
    from one. With ``early_stop_patience``, training stops after that many evaluations without
    improvement. On the CPU, attention and SwiGLU are swapped for fusable versions
    meanwhile (:mod:`sweep.training.cpu_ops`). ``base_scores`` (a
    :class:`~sweep.training.base_scores.BaseScores`) holds the base model's score once
    one trial computed it.
    """
    with fusable_ops_on_cpu(model), checkpointed_blocks(model, settings.grad_checkpoint):
        return _train(model, optimizer, train_set, val_set, settings, listener, save_adapter,
                      loss, eval_loss, checkpoints, resume, base_scores)


@contextmanager
def checkpointed_blocks(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Gradient checkpointing: keep only each block's input for the backward pass and
    recompute the rest (4 x 512 tokens, SmolLM2: peak 7.0 -> 2.2 GB, same speed; at
    4 x 160 it costs ~24%). Patches the block class while in the block, like mlx-lm's
    ``grad_checkpoint``, and restores it after."""
    if not enabled:
        yield
        return
    block = type(model.layers[0])
    original = block.__call__

    def call(self, *args, **kwargs):
        def inner(params, *args, **kwargs):
            self.update(params)
            return original(self, *args, **kwargs)

        return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

    block.__call__ = call
    try:
        yield
    finally:
        block.__call__ = original


def _train(model: nn.Module, optimizer: optim.Optimizer, train_set, val_set,
           settings: LoopSettings, listener: Listener, save_adapter: Callable[[str], Path],
           loss: Loss, eval_loss: ExampleLoss, checkpoints: Optional[Checkpoints],
           resume: Optional[Checkpoint], base_scores=None) -> TrainResult:
    validation = Validation(model, val_set, settings.batch_size, settings.max_seq_length,
                            settings.val_batches, listener, save_adapter, eval_loss,
                            settings.compile, base_scores)
    progress = Progress()
    accumulated = None
    if resume is not None:  # before compiling: the compiled functions capture the state
        accumulated = restore(resume, model, optimizer, validation, progress)
    else:
        optimizer.init(model.trainable_parameters())
    loss_and_grad = nn.value_and_grad(model, partial(loss, split=split_head(model)))

    def micro_step(tokens, positions, accumulated):
        (value, _), grads = loss_and_grad(model, tokens, positions)
        if accumulated is not None:
            grads = tree_map(mx.add, grads, accumulated)
        return value, grads

    if settings.compile:
        state = [model.state, mx.random.state]
        micro_step = partial(mx.compile, inputs=state, outputs=state)(micro_step)
    uniform = math.log(vocab_size(model))

    def update(accumulated, count):
        grads = tree_map(lambda g: g / count, accumulated)
        norm = _global_norm(grads)
        if settings.max_grad_norm is not None:
            grads, norm = optim.clip_grad_norm(grads, settings.max_grad_norm)
        optimizer.update(model, grads)
        return norm

    if settings.compile:  # one graph instead of ~10 small ops per LoRA matrix
        state = [model.state, optimizer.state]
        update = partial(mx.compile, inputs=state, outputs=state)(update)

    def apply_update(accumulated, count: int) -> float:
        norm = update(accumulated, mx.array(count, dtype=mx.float32))
        mx.eval(model.trainable_parameters(), optimizer.state, norm)
        return norm.item()

    def save(kind: str) -> None:
        arrays = {"adapters": dict(tree_flatten(model.trainable_parameters())),
                  "optimizer": dict(tree_flatten(optimizer.state)),
                  "extra": {**{f"accumulated.{k}": v for k, v in
                               tree_flatten(accumulated or {})},
                            **{f"best.{k}": v for k, v in
                               (validation.best_weights or {}).items()}}}
        path = checkpoints.save(progress.state(validation, settings), arrays)
        progress.saved_at = time.monotonic()
        listener.on_checkpoint(CheckpointReport(progress.step, path, kind))

    p = progress
    model.train()
    mx.reset_peak_memory()
    if resume is None:
        validation.run(0, 0, 0)  # the base model (LoRA's B matrices start at zero)
        p.next_eval = settings.eval_every_iters
    p.saved_at = time.monotonic()
    batches = iterate_batches(train_set, settings.batch_size, settings.max_seq_length,
                              rng=np.random.default_rng(settings.seed), loop=True,
                              skip=p.iteration)
    grad_norm = float("nan")
    end = min(settings.stop_at or settings.iters, settings.iters)
    with DeferredStop() as stop:
        for iteration in range(p.iteration + 1, end + 1):
            tokens, positions, n_tokens = next(batches)
            start = time.perf_counter()
            point("train_step")
            mx.random.seed(dropout_seed(settings.seed, iteration))
            value, accumulated = micro_step(tokens, positions, accumulated)
            mx.eval(value, accumulated)
            loss_value = value.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"train loss is {loss_value} at iteration {iteration} (step {p.step}); "
                    "try a lower optimizer.lr or set train.max_grad_norm"
                )
            p.iteration, p.in_step = iteration, p.in_step + 1
            p.window_loss, p.window_micro = p.window_loss + loss_value, p.window_micro + 1
            p.window_tokens, p.trained = p.window_tokens + n_tokens, p.trained + n_tokens
            last = iteration == settings.iters
            pause = iteration == end and not last  # a prefix of the run: it can go on
            if p.in_step == settings.grad_accumulation or last:
                grad_norm = apply_update(accumulated, p.in_step)
                accumulated, p.in_step, p.step = None, 0, p.step + 1
            elapsed = time.perf_counter() - start
            p.window_seconds += elapsed
            p.train_seconds += elapsed
            if p.in_step and not pause:
                stop_if_asked(stop, checkpoints, save, saved=False)
                continue
            if not p.in_step:
                _check_update(p, grad_norm, uniform)
            if not p.in_step and (p.step % settings.report_every == 0 or last):
                listener.on_train_report(TrainReport(
                    step=p.step,
                    iteration=iteration,
                    train_loss=p.window_loss / p.window_micro,
                    learning_rate=optimizer.learning_rate.item(),
                    grad_norm=grad_norm,
                    tokens_per_sec=p.window_tokens / max(p.window_seconds, 1e-9),
                    peak_memory_gb=mx.get_peak_memory() / 1e9,
                    trained_tokens=p.trained,
                ))
                p.window_loss = p.window_seconds = 0.0
                p.window_micro = p.window_tokens = 0
            due = False  # evaluations fall on optimizer steps (not within a paused one)
            if p.in_step:
                pass
            elif settings.eval_every_iters:
                due = iteration >= p.next_eval
                while p.next_eval <= iteration:
                    p.next_eval += settings.eval_every_iters
            else:
                due = p.step % settings.eval_every == 0
            if due and not last:
                validation.run(p.step, iteration, p.trained)
                if (settings.early_stop_patience
                        and validation.since_best >= settings.early_stop_patience):
                    p.stopped_early = last = True
            if pause and not last:  # the state an unbroken run has here, for train.resume
                if checkpoints is not None:
                    save("stop")
                p.paused = last = True
            if last:
                validation.final(p.step, iteration, p.trained, grad_norm, uniform)
                break
            saved = checkpoints is not None and save_due(settings, p)
            if saved:
                save("periodic")
            stop_if_asked(stop, checkpoints, save, saved)
    v = validation
    return TrainResult(v.chosen.loss, v.chosen_at[0], p.step, p.iteration, p.trained,
                       p.train_seconds, v.seconds, v.chosen.se, v.chosen_at[1], v.base.loss,
                       p.stopped_early, p.paused)


def _check_update(p: Progress, grad_norm: float, uniform: float) -> None:
    if not math.isfinite(grad_norm):
        raise NonFiniteLossError(f"gradient norm is {grad_norm} at step {p.step}; try "
                                 "a lower optimizer.lr or set train.max_grad_norm")
    check_not_dead(p.step, p.window_loss / p.window_micro, grad_norm, uniform)
