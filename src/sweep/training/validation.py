"""The evaluations of one trial, and the checks that a trial's result means something.

While training, every evaluation scores the same ``train.val_batches`` batches (cheap,
for pruning). The last one scores the whole validation split, for the last weights and,
when an earlier evaluation was better on the subset, for that checkpoint too; the
better of the two is the best adapter, and its whole-split loss (with its standard
error over examples) the trial's objective. A 16-example subset cannot tell 2.6354
from 2.6330; 71 examples give a standard error to judge by.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from sweep.errors import TrialFailed
from sweep.training.events import CheckpointReport, EvalReport, Listener
from sweep.training.heads import split_head
from sweep.stats import token_weighted
from sweep.training.scoring import ExampleLoss, Score, score

__all__ = ["NonFiniteLossError", "CollapsedError", "Validation", "vocab_size", "check_not_dead",
           "scored_subset"]


class NonFiniteLossError(TrialFailed, FloatingPointError):
    """The loss or the gradient norm became NaN or infinite."""


class CollapsedError(TrialFailed):
    """The model collapsed: it predicts no better than a uniform distribution, or it
    learnt nothing and its gradient is zero."""


def vocab_size(model: nn.Module) -> int:
    args = getattr(model, "args", None)
    if getattr(args, "vocab_size", None):
        return int(args.vocab_size)
    return int(model.model.embed_tokens.weight.shape[0])


def check_not_dead(step: int, train_loss: float, grad_norm: float, uniform: float) -> None:
    """A uniform prediction with a zero gradient can never learn again (lr=10 ends
    there: loss 10.80 = ln(49152)): stop now rather than after the whole budget."""
    if grad_norm <= 1e-12 and abs(train_loss - uniform) < 1e-2:
        raise CollapsedError(
            f"collapsed at step {step}: train loss {train_loss:.4f} = ln(vocabulary) "
            f"{uniform:.4f} (a uniform prediction) with a zero gradient, so it cannot learn "
            "any more; try a lower optimizer.lr")


def scored_subset(n_examples: int, batch_size: int, val_batches: int) -> int:
    """The batches an evaluation during training scores; -1: all of them."""
    n_batches = -(-n_examples // batch_size)
    return -1 if val_batches == -1 or val_batches >= n_batches else val_batches


class Validation:
    """Scores the validation split, reports each evaluation, keeps the best weights (in
    memory: LoRA's are small; and on disk through ``save_adapter("best")``)."""

    def __init__(self, model: nn.Module, val_set, batch_size: int, max_seq_length: int,
                 val_batches: int, listener: Listener, save_adapter: Callable[[str], Path],
                 loss: ExampleLoss, compile: bool = True, base_scores: Any = None):
        self.model, self.val_set = model, val_set
        self.batch_size, self.max_seq_length = batch_size, max_seq_length
        self.listener, self.save_adapter = listener, save_adapter
        bound = partial(loss, model, split=split_head(model))
        self.compiled = mx.compile(bound, inputs=[model.state]) if compile else bound
        self.subset = scored_subset(len(val_set), batch_size, val_batches)
        self.seconds = 0.0
        self.base: Optional[Score] = None  # step 0, on the subset
        self.best: Optional[Score] = None  # best so far, on the subset
        self.best_at = (0, 0)  # (optimizer step, micro-batch)
        self.best_weights = None
        self.chosen: Optional[Score] = None  # the final choice, on the whole split
        self.chosen_at = (0, 0)
        self.since_best = 0  # evaluations since the best (for early stopping)
        self.base_scores = base_scores  # a BaseScores cache of the step-0 score, or None

    def state(self) -> Dict[str, Any]:
        """The history a checkpoint keeps (the best weights go beside it as arrays)."""
        return {"seconds": self.seconds, "base": _score_state(self.base),
                "best": _score_state(self.best), "best_at": list(self.best_at),
                "since_best": self.since_best}

    def restore(self, state: Dict[str, Any], best_weights: Dict[str, mx.array]) -> None:
        self.seconds, self.since_best = state["seconds"], state["since_best"]
        self.base, self.best = _from_state(state["base"]), _from_state(state["best"])
        self.best_at = tuple(state["best_at"])
        self.best_weights = best_weights or None

    def _score(self, max_batches: int) -> Score:
        result = score(self.model, self.val_set, self.batch_size, self.max_seq_length,
                       max_batches, compiled=self.compiled)
        if not math.isfinite(result.loss):
            raise NonFiniteLossError(f"validation loss is {result.loss}")
        return result

    def _report(self, result: Score, at, trained: int, is_best: bool, seconds: float,
                final: bool, last: float = float("nan")) -> None:
        self.listener.on_eval_report(EvalReport(
            at[0], at[1], result.loss, result.ppl, is_best, trained, seconds, final, result.se,
            tuple(int(i) for i in result.indexes), tuple(float(v) for v in result.losses),
            tuple(int(n) for n in result.counts), final or self.subset == -1, last))

    def run(self, step: int, iteration: int, trained: int) -> Score:
        """An evaluation during training (step 0: the base model)."""
        from sweep.testing.faults import point

        point("evaluation")
        start = time.perf_counter()
        cache = self.base_scores if self.base is None else None
        result = cache.get() if cache is not None else None
        if result is None:
            result = self._score(self.subset)
            if cache is not None:
                cache.put(result)
        self.seconds += time.perf_counter() - start
        if self.base is None:
            self.base = result
        improved = self.best is None or result.loss < self.best.loss
        self.since_best = 0 if improved else self.since_best + 1
        if improved:
            self.best, self.best_at = result, (step, iteration)
            self.best_weights = dict(tree_flatten(self.model.trainable_parameters()))
        self._report(result, (step, iteration), trained, improved,
                     time.perf_counter() - start, final=False)
        if improved:
            self.listener.on_checkpoint(
                CheckpointReport(step, self.save_adapter("best"), "best", result.loss))
        return result

    def final(self, step: int, iteration: int, trained: int, grad_norm: float,
              uniform: float) -> Score:
        """The last evaluation: the whole split; the trial's objective is the better of
        the last weights and the best earlier checkpoint, both on the whole split."""
        start = time.perf_counter()
        last = self._score(-1)
        chosen, chosen_at = last, (step, iteration)
        if self.best is not None and self.best.loss < self.restrict(last).loss:
            current = dict(tree_flatten(self.model.trainable_parameters()))
            self.model.load_weights(list(self.best_weights.items()), strict=False)
            earlier = self.best if self.subset == -1 else self._score(-1)
            if earlier.loss < last.loss:
                chosen, chosen_at = earlier, self.best_at
            else:
                self.model.load_weights(list(current.items()), strict=False)
        self.seconds += time.perf_counter() - start
        self.chosen, self.chosen_at = chosen, chosen_at
        # logged at the last step: the objective (the chosen checkpoint, whole split), and
        # the last weights' loss beside it
        self._report(chosen, (step, iteration), trained, chosen is last,
                     time.perf_counter() - start, final=True, last=last.loss)
        self.listener.on_checkpoint(
            CheckpointReport(chosen_at[0], self.save_adapter("best"), "best", chosen.loss))
        self._check(chosen_at[0], last, self.restrict(last), grad_norm, uniform)
        return chosen

    def _check(self, chosen_step: int, last: Score, last_on_subset: Score, grad_norm: float,
               uniform: float) -> None:
        base = self.base.loss
        if chosen_step == 0 and last.loss >= uniform and base < uniform:
            raise CollapsedError(
                f"collapsed: validation loss {last.loss:.4f} is at or above ln(vocabulary) "
                f"{uniform:.4f}, a uniform prediction (base model: {base:.4f}), and no "
                "evaluation improved on the base model; try a lower optimizer.lr")
        if chosen_step == 0 and last_on_subset.loss > 1.05 * base:
            raise CollapsedError(
                f"diverged: validation loss {last_on_subset.loss:.4f} against the base "
                f"model's {base:.4f}, and no evaluation improved on the base model; try a "
                "lower optimizer.lr")
        if grad_norm <= 1e-12 and last_on_subset.loss >= base:
            raise CollapsedError(
                f"learnt nothing: validation loss {last_on_subset.loss:.4f} is not below the "
                f"base model's {base:.4f} and the gradient is zero")

    def restrict(self, whole: Score) -> Score:
        """``whole`` on the examples the evaluations during training score."""
        if self.subset == -1 or self.base is None:
            return whole
        keep = np.isin(whole.indexes, self.base.indexes)
        mean, se = token_weighted(whole.losses[keep], whole.counts[keep])
        return Score(mean, se, whole.indexes[keep], whole.losses[keep], whole.counts[keep])


def _score_state(score: Optional[Score]) -> Optional[Dict[str, Any]]:
    if score is None:
        return None
    return {"loss": score.loss, "se": score.se, "indexes": [int(i) for i in score.indexes],
            "losses": [float(v) for v in score.losses],
            "counts": [int(n) for n in score.counts]}


def _from_state(state: Optional[Dict[str, Any]]) -> Optional[Score]:
    if state is None:
        return None
    return Score(state["loss"], state["se"], np.array(state["indexes"], np.int64),
                 np.array(state["losses"], np.float64), np.array(state["counts"], np.int64))
