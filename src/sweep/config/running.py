"""Typed schemas of how one trial runs: the training loop (``train``), its tracking
(``mlflow``), its link to the sweep (``trial``, set by the sweeper) and the function that
runs it (``runner``). Part of :mod:`sweep.config.schema`, which composes them with the
model, LoRA, optimizer, scheduler and data groups; the same rules apply (checks in
``__post_init__``, messages naming the full key, no heavy imports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from sweep.config.checks import require as _require

__all__ = ["TrainConfig", "MlflowConfig", "TrialLink", "RunnerConfig"]


@dataclass
class TrainConfig:
    batch_size: int = 4
    grad_accumulation: int = 4  # micro-batches per optimizer step
    # Micro-batches to train on: every trial sees the same examples whatever its
    # accumulation. `epochs` (if set) overrides it: epochs * len(train) / batch_size.
    iters: int = 64
    epochs: Optional[float] = None
    # Stop after this many epochs of that budget, a checkpoint written there (the schedule
    # stays over the whole budget): a prefix of the full run, which train.resume continues.
    # A sweep's trials use it to search short; the winner then goes on (finish_winner).
    stop_after_epochs: Optional[float] = None
    finish_winner: bool = True
    max_seq_length: int = 512
    max_grad_norm: Optional[float] = 1.0  # null = no clipping
    eval_every: int = 4  # optimizer steps between evaluations (and one at step 0)
    # Or every N micro-batches (at the next optimizer step): sweeps over accumulation use
    # it so every trial is evaluated (and pruned) after the same examples.
    eval_every_iters: Optional[int] = None
    # Or every this many epochs (overrides both): pruning rungs in data, whatever the budget.
    eval_every_epochs: Optional[float] = None
    # Batches scored at each evaluation during training (the same ones every time, for
    # pruning); -1 = all. The last evaluation always scores the whole split.
    val_batches: int = 8
    # Examples longer than max_seq_length are cut (and reported); true: dropped instead.
    drop_long_examples: bool = False
    # Checkpoints of the whole training state (adapter, optimizer, counters, validation
    # history) in <run folder>/checkpoints, every save_every optimizer steps and/or every
    # save_every_minutes (0 = off), and on SIGTERM or Ctrl-C; the newest keep_checkpoints
    # are kept. resume: null, auto (the newest checkpoint of this run's folder, else of
    # the newest earlier run of the same config beside it), or a checkpoint's path.
    save_every: int = 0
    save_every_minutes: float = 0.0
    keep_checkpoints: int = 2
    resume: Optional[str] = None
    # Stop after this many evaluations without improvement (on the subset scored during
    # training); the final evaluation still scores the whole split. null = off.
    early_stop_patience: Optional[int] = None
    report_every: int = 1  # optimizer steps between train reports
    compile: bool = True  # mx.compile the step function
    # Recompute each block in the backward pass (much less memory for long sequences).
    # null: on when batch_size x the longest training example (capped at
    # max_seq_length) reaches 2048 tokens.
    grad_checkpoint: Optional[bool] = None

    def __post_init__(self) -> None:
        for key in ("batch_size", "grad_accumulation", "iters", "max_seq_length",
                    "eval_every", "report_every"):
            value = getattr(self, key)
            _require(value > 0, f"train.{key}", "must be > 0", value)
        _require(self.epochs is None or self.epochs > 0, "train.epochs", "must be null or > 0",
                 self.epochs)
        _require(self.stop_after_epochs is None or self.stop_after_epochs > 0,
                 "train.stop_after_epochs", "must be null or > 0", self.stop_after_epochs)
        _require(self.epochs is not None or self.iters >= self.grad_accumulation,
                 "train.iters", "must be >= train.grad_accumulation (at least one optimizer "
                 "step)", self.iters)
        _require(self.max_grad_norm is None or self.max_grad_norm > 0, "train.max_grad_norm",
                 "must be null (no clipping) or > 0", self.max_grad_norm)
        _require(self.val_batches == -1 or self.val_batches > 0, "train.val_batches",
                 "must be -1 (all) or > 0", self.val_batches)
        _require(self.eval_every_iters is None or self.eval_every_iters > 0,
                 "train.eval_every_iters", "must be null or > 0", self.eval_every_iters)
        _require(self.save_every >= 0, "train.save_every", "must be >= 0", self.save_every)
        _require(self.eval_every_epochs is None or self.eval_every_epochs > 0,
                 "train.eval_every_epochs", "must be null or > 0", self.eval_every_epochs)
        _require(self.save_every_minutes >= 0, "train.save_every_minutes", "must be >= 0",
                 self.save_every_minutes)
        _require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1",
                 self.keep_checkpoints)
        _require(self.early_stop_patience is None or self.early_stop_patience > 0,
                 "train.early_stop_patience", "must be null (off) or > 0",
                 self.early_stop_patience)
        _require(self.resume is None or bool(str(self.resume).strip()), "train.resume",
                 "must be null, auto or a checkpoint's path", self.resume)


@dataclass
class MlflowConfig:
    enabled: bool = True
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    experiment: str = "sweep"
    # null: beside a SQLite database (<db folder>/artifacts), else MLflow's default
    artifact_location: Optional[str] = None
    run_name: Optional[str] = None
    # A run's whole-state checkpoints also as artifacts (checkpoint/), so that a stopped
    # trial can go on on another machine; null: when tracking_uri is a server (http/https).
    log_checkpoints: Optional[bool] = None

    @property
    def checkpoints_logged(self) -> bool:
        if self.log_checkpoints is not None:
            return self.log_checkpoints
        return self.tracking_uri.startswith(("http://", "https://"))

    def __post_init__(self) -> None:
        _require(bool(self.tracking_uri), "mlflow.tracking_uri", "must not be empty",
                 self.tracking_uri)
        _require(bool(self.experiment), "mlflow.experiment", "must not be empty",
                 self.experiment)


@dataclass
class TrialLink:
    """Set by the sweeper for each job (not by users): which Optuna trial this job is."""

    storage: Optional[str] = None
    study_name: Optional[str] = None
    number: Optional[int] = None
    parent_run_id: Optional[str] = None  # the study's MLflow run
    objectives: List[str] = field(default_factory=lambda: ["val_loss"])
    constraints: Dict[str, str] = field(default_factory=dict)  # measure -> ">= 0.5"


@dataclass
class RunnerConfig:
    """The function that runs one trial, with :func:`sweep.trial.run_trial`'s arguments and
    result. Only tests and the load benchmark change it (``runner._target_=
    sweep.testing.zero_cost.run``: trials without data, model or training)."""

    _target_: str = "sweep.trial.run_trial"
