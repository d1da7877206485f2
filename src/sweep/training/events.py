"""What the training loop reports, and the listener interface that receives it.

The loop knows nothing of MLflow or Optuna: trackers, pruners and checkpoint keepers
are listeners. A listener may raise (e.g. optuna.TrialPruned) to stop the trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Tuple


@dataclass(frozen=True)
class TrainReport:
    step: int  # optimizer steps done
    iteration: int  # micro-batches done
    train_loss: float  # mean over the micro-batches since the last report
    learning_rate: float
    grad_norm: float  # before clipping
    tokens_per_sec: float
    peak_memory_gb: float
    trained_tokens: int  # all tokens fed so far (prompt and answer, no padding)


@dataclass(frozen=True)
class EvalReport:
    step: int
    iteration: int  # micro-batches done (comparable across accumulation settings)
    val_loss: float
    val_ppl: float
    is_best: bool
    trained_tokens: int
    seconds: float
    final: bool = False  # the last evaluation of the trial: the whole split, the objective
    val_loss_se: float = float("nan")  # standard error over the examples scored
    examples: Tuple[int, ...] = ()  # the validation examples scored (dataset indexes)
    example_losses: Tuple[float, ...] = ()  # the mean loss of each, in that order
    example_tokens: Tuple[int, ...] = ()  # the answer tokens of each
    whole_split: bool = False  # every validation example was scored
    # final: val_loss is the chosen checkpoint's (the objective); this, the last weights'
    last_val_loss: float = float("nan")


@dataclass(frozen=True)
class CheckpointReport:
    step: int
    path: Path
    kind: str  # "best"; whole training state: "periodic", or "stop" (SIGTERM, Ctrl-C)
    val_loss: Optional[float] = None


@dataclass(frozen=True)
class TrainResult:
    best_val_loss: float  # over the whole validation split (the trial's objective)
    best_step: int
    steps: int
    iterations: int
    trained_tokens: int
    train_seconds: float
    eval_seconds: float
    best_val_loss_se: float = float("nan")
    best_iteration: int = 0
    base_val_loss: float = float("nan")  # step 0, the same examples as the other evaluations
    stopped_early: bool = False  # train.patience evaluations without improvement
    paused: bool = False  # at train.stop_after_epochs: a prefix of the run, train.resume goes on


class TrialStopped(Exception):
    """Raised by a listener to end the trial early on purpose (e.g. a pruner)."""

    state = "STOPPED"


class Listener:
    """Base class with no-op hooks; override the ones you need."""

    def on_train_report(self, report: TrainReport) -> None: ...

    def on_eval_report(self, report: EvalReport) -> None: ...

    def on_checkpoint(self, report: CheckpointReport) -> None: ...


class Listeners(Listener):
    """Fan events out to several listeners, in order."""

    def __init__(self, listeners: Iterable[Listener] = ()):
        self.listeners: List[Listener] = list(listeners)

    def on_train_report(self, report: TrainReport) -> None:
        for listener in self.listeners:
            listener.on_train_report(report)

    def on_eval_report(self, report: EvalReport) -> None:
        for listener in self.listeners:
            listener.on_eval_report(report)

    def on_checkpoint(self, report: CheckpointReport) -> None:
        for listener in self.listeners:
            listener.on_checkpoint(report)
