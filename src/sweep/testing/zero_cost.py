"""A trial runner for load tests: ``runner._target_=sweep.testing.zero_cost.run`` replaces a
trial's data, model and training with a zero-cost objective, and keeps everything around
them real.

A job of a sweep with it still composes its config through Hydra, is an Optuna trial (its
heartbeat, ``trial.report`` and ``should_prune`` at each evaluation point, its tell), and
records an MLflow run as a trial does: the nested child run with the flattened config as
params, ``val_loss``/``val_ppl`` at the evaluation points, the ``config/`` artifacts,
``best_val_loss`` and the end state; ``SWEEP_FAULT=train_step...`` fires at each
evaluation point. Nothing is loaded or trained, and no adapter is
written, so a sweep's last steps must be off: ``eval.after_sweep=false
registry.after_sweep=false`` (the load benchmark, ``bench/load.py``, sets them).

The objective is a smooth function of the searched values (a bowl around lr 5e-4, rank 16,
alpha = 2 x rank, accumulation 2, near the default sweep's real winner), reached along a
falling curve, so samplers and pruners have something to work with. Its runs carry the
param ``zero_cost=True``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

__all__ = ["TARGET", "objective", "run", "answer_metrics"]

TARGET = "sweep.testing.zero_cost.run"  # runner._target_ that selects it
BASE_LOSS = 3.1  # the base model's validation loss on the default data, roughly


def objective(lr: float, rank: int, alpha: float, grad_accumulation: int) -> float:
    """The final validation loss the hook reports for these values."""
    return (2.6 + 0.15 * (math.log10(lr) - math.log10(5e-4)) ** 2
            + 0.02 * (math.log2(max(rank, 1)) - 4) ** 2
            + 0.03 * abs(math.log2(max(alpha, 1e-9) / max(rank, 1)) - 1)
            + 0.01 * (grad_accumulation - 2) ** 2)


def run(cfg: Any, output_dir: Path, *, overrides: Sequence[str] = (),
        listeners: Iterable[Any] = (), parent_run_id: Optional[str] = None,
        run_name: Optional[str] = None, tags: Optional[Dict[str, str]] = None, label: str = "",
        on_start: Optional[Callable[[Optional[str], str], None]] = None,
        answer_val: Optional[Callable[..., Dict[str, float]]] = None):
    """:func:`sweep.trial.run_trial`'s stand-in (same arguments, same result), without
    data, model or training."""
    from sweep.config import flatten, to_typed
    from sweep.testing.faults import point as fault
    from sweep.tracking.mlflow_tracker import check_tracking
    from sweep.tracking.run import open_tracker, tracked_run, write_config
    from sweep.training.events import EvalReport, Listeners, TrainResult
    from sweep.trial import TrialResult

    started = time.perf_counter()
    typed = to_typed(cfg)
    if typed.mlflow.enabled:
        check_tracking(typed.mlflow)
    tracker = open_tracker(typed.mlflow, run_name, parent_run_id)
    t = typed.train
    final = objective(typed.optimizer.lr, typed.lora.rank, typed.lora.alpha,
                      t.grad_accumulation)
    trainable = typed.lora.rank * 2 * 576 * 30 * 7  # SmolLM2-135M's shape, all linear layers
    params = {**flatten(typed), "lora.scale": typed.lora.scale,
              "trainable_parameters": trainable, "zero_cost": True}
    every = t.eval_every_iters or max(1, t.iters // 3)
    points = list(range(every, t.iters, every)) + [t.iters]
    listener = Listeners([tracker, *listeners])
    output_dir = Path(output_dir)
    with tracked_run(tracker, params, {"sweep.output_dir": str(output_dir.resolve()),
                                       **(tags or {})}):
        if on_start is not None:
            on_start(tracker.run_id, str(output_dir.resolve()))
        tracker.log_artifacts(write_config(cfg, overrides, output_dir / "config"), "config")
        for point in points:
            fault("train_step")  # the fault points a training trial passes (sweep.testing.faults)
            left = 1.0 - point / t.iters
            value = final + (BASE_LOSS - final) * left * left
            listener.on_eval_report(EvalReport(
                step=point // t.grad_accumulation, iteration=point, val_loss=value,
                val_ppl=math.exp(value), is_best=True, trained_tokens=0, seconds=0.0,
                final=point == t.iters, val_loss_se=0.05, whole_split=point == t.iters))
        result = TrainResult(best_val_loss=final, best_step=t.iters // t.grad_accumulation,
                             steps=t.iters // t.grad_accumulation, iterations=t.iters,
                             trained_tokens=0, train_seconds=0.0, eval_seconds=0.0,
                             best_val_loss_se=0.05, best_iteration=t.iters,
                             base_val_loss=BASE_LOSS)
        tracker.log_metrics({"best_val_loss": final, "best_val_loss_se": 0.05}, t.iters)
        answers = {} if answer_val is None else answer_metrics(typed.optimizer.lr)
        tracker.log_metrics(answers, t.iters)
    return TrialResult(final, result.best_step, output_dir / "adapter", "", tracker.run_id,
                       trainable, result, time.perf_counter() - started, answers)


def answer_metrics(lr: float) -> Dict[str, float]:
    """The validation answer metrics the runner reports when asked for them: constant
    but for citation precision, which falls as the lr rises (0.9 at 1e-4, 0.725 at 5e-4),
    so the best loss and the best precision pull apart as on the real data."""
    precision = min(1.0, max(0.0, 0.9 - 0.25 * (math.log10(lr) + 4)))
    out = {"val_rougeL": 0.25, "val_bleu": 7.0, "val_f1": 0.27, "val_exact_match": 0.0,
           "val_citation_precision": precision, "val_citation_recall": 0.12}
    out.update({f"{k}_se": 0.02 for k in list(out)})
    return out
