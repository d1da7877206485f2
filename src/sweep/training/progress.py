"""Where a training run is, and how a checkpoint puts a run back there: the counters a
checkpoint saves, the key of each micro-batch's dropout masks, when a checkpoint is due,
and loading one into the model, optimizer and validation history
(:mod:`sweep.training.checkpoint` writes and reads the files)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Optional

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map_with_path, tree_unflatten

from sweep.training.checkpoint import Checkpoint
from sweep.training.interrupt import DeferredStop
from sweep.training.validation import Validation

__all__ = ["Progress", "dropout_seed", "save_due", "restore", "stop_if_asked"]


def dropout_seed(seed: int, iteration: int) -> int:
    """The key of a micro-batch's dropout masks: a function of the run's seed and the
    micro-batch's number only, so a resumed run draws the masks an unbroken one does."""
    return (seed * 1_000_003 + iteration) % (2 ** 63)


def save_due(settings: Any, p: "Progress") -> bool:
    if settings.save_every and p.step % settings.save_every == 0:
        return True
    return bool(settings.save_every_seconds
                and time.monotonic() - p.saved_at >= settings.save_every_seconds)


@dataclass
class Progress:
    """Where a run is: the counters a checkpoint saves and a resumed run starts from."""

    iteration: int = 0  # micro-batches trained
    step: int = 0  # optimizer steps
    in_step: int = 0  # micro-batches accumulated towards the next optimizer step
    trained: int = 0  # tokens
    next_eval: Optional[int] = None  # micro-batch of the next evaluation (eval_every_iters)
    train_seconds: float = 0.0
    window_loss: float = 0.0  # since the last train report
    window_micro: int = 0
    window_tokens: int = 0
    window_seconds: float = 0.0
    stopped_early: bool = False
    paused: bool = False  # stopped at LoopSettings.stop_at, a checkpoint written there
    saved_at: float = 0.0  # time.monotonic() of the last checkpoint (not saved)

    FIELDS = ("iteration", "step", "in_step", "trained", "next_eval", "train_seconds",
              "window_loss", "window_micro", "window_tokens", "window_seconds")

    def state(self, validation: Validation, settings: Any) -> Dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.FIELDS},
                "iters": settings.iters, "grad_accumulation": settings.grad_accumulation,
                "batch_size": settings.batch_size, "seed": settings.seed,
                "validation": validation.state()}


def restore(resume: Checkpoint, model: nn.Module, optimizer: optim.Optimizer,
             validation: Validation, progress: Progress):
    """Load ``resume`` into the model, optimizer, validation history and ``progress``;
    returns the gradients accumulated in the unfinished optimizer step (or None)."""
    state, arrays = resume.state, resume.arrays
    model.load_weights(list(arrays["adapters"].items()), strict=False)
    optimizer.init(model.trainable_parameters())
    optimizer.state = tree_unflatten(list(arrays["optimizer"].items()))
    for key in Progress.FIELDS:
        setattr(progress, key, state[key])
    extra = arrays.get("extra", {})
    validation.restore(state["validation"],
                       {k[len("best."):]: v for k, v in extra.items() if k.startswith("best.")})
    accumulated = {k[len("accumulated."):]: v for k, v in extra.items()
                   if k.startswith("accumulated.")}
    mx.eval(model.trainable_parameters(), optimizer.state)
    if not accumulated:
        return None
    # the gradients' tree is the trainable parameters' (tree_unflatten would not rebuild
    # the empty branches of frozen modules)
    return tree_map_with_path(lambda path, _: accumulated[path], model.trainable_parameters())


def stop_if_asked(stop: DeferredStop, checkpoints: Any, save: Any, saved: bool) -> None:
    """After a micro-batch: a SIGTERM or Ctrl-C noted meanwhile writes a checkpoint (unless
    one was just written) and then stops the run as the signal would have."""
    if stop.requested is None:
        return
    if checkpoints is not None and not saved:
        save("stop")
    stop.deliver()
