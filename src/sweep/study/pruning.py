"""A median pruner that does not decide on noise.

Optuna's ``MedianPruner`` prunes a trial whose intermediate value is worse than the
median of the completed trials at the same step, however small the difference. Here
every evaluation scores the same validation examples in every trial, and each job
stores each example's loss on its trial (``val@<step>``), so two trials can be compared
example by example: the paired difference of their token-weighted losses has a far
smaller standard error than either loss (the examples' difficulty cancels). A trial is
pruned only when it is worse than the median trial by more than ``z`` of those standard
errors. Optuna's ``WilcoxonPruner`` compares per-instance values too, but its steps are
the instances of a single evaluation, not evaluations during training.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.trial import TrialState

from sweep.stats import paired_loss_difference, token_weighted

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = ["PairedMedianPruner", "examples_attr"]


def examples_attr(step: int) -> str:
    """The trial user attribute holding each example's loss at ``step``."""
    return f"val@{step}"


class PairedMedianPruner(BasePruner):
    """Prune when the trial is worse than the median completed trial at the same step by
    more than ``z`` standard errors of their paired difference (``paired=False``: of the
    trial's own loss, for trials without per-example losses). ``z=0`` is Optuna's
    ``MedianPruner``."""

    def __init__(self, n_startup_trials: int = 1, n_warmup_steps: int = 0, z: float = 2.0,
                 paired: bool = True):
        if n_startup_trials < 0 or n_warmup_steps < 0 or z < 0:
            raise ValueError("n_startup_trials, n_warmup_steps and z must be >= 0")
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.z, self.paired = z, paired

    def prune(self, study: "optuna.Study", trial: "FrozenTrial") -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        value = trial.intermediate_values[step]
        if not math.isfinite(value):
            return True
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < max(self.n_startup_trials, 1):
            return False
        others = sorted((t for t in completed if math.isfinite(
            t.intermediate_values.get(step, math.nan))),
            key=lambda t: t.intermediate_values[step])
        if not others:
            return False
        median = others[len(others) // 2]  # the upper median: the cautious one
        if value <= median.intermediate_values[step]:
            return False
        mine = trial.user_attrs.get(examples_attr(step))
        theirs = median.user_attrs.get(examples_attr(step))
        margin = 0.0
        if mine is not None and theirs is not None and self.paired:
            compared = paired_loss_difference(mine, theirs)
            if compared is not None:
                difference, se = compared
                return difference > self.z * se
        if mine is not None:
            margin = self.z * token_weighted(np.asarray(mine["l"]), np.asarray(mine["n"]))[1]
        return value - median.intermediate_values[step] > (margin if math.isfinite(margin)
                                                            else 0.0)
