"""``hydra.sweeper.terminate``: end a sweep before ``n_trials`` when more trials are not
expected to beat the best by more than the noise of its value.

Rules (``rule``):

- ``none`` (default): the sweep runs ``n_trials``.
- ``noise``: the best value has not been beaten by more than ``z`` standard errors of
  itself (the objective's ``<name>_se``: for ``val_loss``, the standard error of the mean
  over the whole validation split) in the last ``patience`` trials this study finished
  (pruned ones count: they were spent). Written here, not taken from Optuna: it needs
  nothing but the values and their errors, and it is what the replays measured
  (docs/search.md#knowing-when-to-stop).
- ``regret_bound`` / ``emmr``: Optuna's ``Terminator`` with its ``RegretBoundEvaluator`` or
  ``EMMREvaluator`` (Gaussian processes: they need PyTorch) against an error evaluator fed by
  the same standard error. Optuna 4.9 deprecated ``optuna.terminator`` (to move to
  OptunaHub; removal planned for 6.0), so these stay a choice, not the default.

Only the study's own trials count towards ``min_trials`` (warm start's copies are
evidence for the sampler, not trials of this sweep).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, List, Mapping, Optional

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from sweep.study.trials import ran

from hydra_plugins.sweep_optuna._proposals import SweepAborted

__all__ = ["RULES", "TERMINATED_ATTR", "check_terminate", "why_stop", "terminated"]

log = logging.getLogger("sweep.sweeper")

RULES = ("none", "noise", "regret_bound", "emmr")
TERMINATED_ATTR = "terminated"  # study user attr: why the sweep stopped early


def _se(t: FrozenTrial, objective: str) -> Optional[float]:
    se = t.user_attrs.get(f"{objective}_se")
    return float(se) if isinstance(se, (int, float)) and math.isfinite(se) else None


def check_terminate(settings: Mapping[str, Any], n_objectives: int) -> None:
    """Bad settings, before any trial: one line naming the key."""
    t = dict(settings.get("terminate") or {})
    rule = str(t.get("rule", "none"))
    if rule not in RULES:
        raise SweepAborted(f"hydra.sweeper.terminate.rule={rule}: choose from {list(RULES)}")
    if rule == "none":
        return
    if n_objectives != 1:
        raise SweepAborted(f"hydra.sweeper.terminate.rule={rule} needs one objective, not "
                           f"{n_objectives}")
    for key in ("min_trials", "patience"):
        if int(t.get(key, 1)) < 1:
            raise SweepAborted(f"hydra.sweeper.terminate.{key}={t.get(key)}: must be >= 1")
    if float(t.get("z", 1.0)) < 0:
        raise SweepAborted(f"hydra.sweeper.terminate.z={t.get('z')}: must be >= 0")
    if rule in ("regret_bound", "emmr"):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise SweepAborted(f"hydra.sweeper.terminate.rule={rule} needs PyTorch (pip install "
                               "torch); rule=noise does not") from None


def why_stop(study: optuna.Study, settings: Mapping[str, Any], objective: str) -> Optional[str]:
    """A line saying why the sweep should stop now, or None to go on."""
    t = dict(settings.get("terminate") or {})
    rule = str(t.get("rule", "none"))
    if rule == "none":
        return None
    trials = study.get_trials(deepcopy=False)
    own = [x for x in trials if ran(x) and x.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [x for x in own if x.state == TrialState.COMPLETE and x.values]
    if len(own) < int(t.get("min_trials", 8)) or not complete:
        return None
    sign = 1.0 if study.directions[0] == StudyDirection.MINIMIZE else -1.0
    if rule == "noise":
        return _noise(own, sign, objective, int(t.get("patience", 8)), float(t.get("z", 1.0)))
    return _optuna_terminator(study, rule, objective, t, trials)


def terminated(study: optuna.Study, settings: Mapping[str, Any], objective: str) -> bool:
    """Whether the sweep ends now; says why (the log, the study's user attr
    ``terminated``, which the report and the parent run's tag repeat)."""
    why = why_stop(study, settings, objective)
    if why is None:
        return False
    log.info("Stopping before hydra.sweeper.n_trials=%s: %s", settings["n_trials"], why)
    study.set_user_attr(TERMINATED_ATTR, why)
    return True


def _noise(own: List[FrozenTrial], sign: float, objective: str, patience: int,
           z: float) -> Optional[str]:
    best: Optional[FrozenTrial] = None
    since = 0  # finished trials since the last improvement beyond the noise
    for x in sorted(own, key=lambda x: x.number):
        since += 1
        if x.state != TrialState.COMPLETE or not x.values:
            continue
        if best is None:
            best, since = x, 0
            continue
        margin = z * (_se(best, objective) or 0.0)
        if sign * x.values[0] < sign * best.values[0] - margin:
            best, since = x, 0
        elif sign * x.values[0] < sign * best.values[0]:
            best = x  # better, but within the noise: the count goes on
    if best is None or since < patience:
        return None
    se = _se(best, objective)
    noise = f" +- {se:.4f}" if se is not None else ""
    return (f"the best {objective} ({best.values[0]:.4f}{noise}, trial {best.number}) has not "
            f"been beaten by more than {z:g} standard error(s) in the last {since} trials "
            f"(hydra.sweeper.terminate.rule=noise, patience={patience})")


def _optuna_terminator(study: optuna.Study, rule: str, objective: str, t: Mapping[str, Any],
                       trials: List[FrozenTrial]) -> Optional[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the module's deprecation
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        from optuna.terminator import (BaseErrorEvaluator, EMMREvaluator, RegretBoundEvaluator,
                                       Terminator)

        class StandardError(BaseErrorEvaluator):
            """The best complete trial's standard error, times z: the noise of the value."""

            def evaluate(self, trials, study_direction) -> float:
                done = [x for x in trials if x.state == TrialState.COMPLETE and x.values]
                sign = 1.0 if study_direction == StudyDirection.MINIMIZE else -1.0
                best = min(done, key=lambda x: sign * x.values[0])
                return float(t.get("z", 1.0)) * (_se(best, objective) or 0.0)

        improvement = RegretBoundEvaluator() if rule == "regret_bound" else EMMREvaluator()
        terminator = Terminator(improvement_evaluator=improvement,
                                error_evaluator=StandardError(),
                                min_n_trials=int(t.get("min_trials", 8)))
        if not terminator.should_terminate(study):
            return None
        bound = improvement.evaluate(trials, study.direction)
        noise = StandardError().evaluate(trials, study.direction)
    return (f"Optuna's {type(improvement).__name__} expects at most {bound:.4f} of "
            f"improvement, less than the noise of the best value ({noise:.4f}: "
            f"hydra.sweeper.terminate.rule={rule})")
