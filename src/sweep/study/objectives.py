"""What a sweep can optimise or constrain: one definition of each measure's name and
direction (the sweeper's ``hydra.sweeper.objectives`` / ``constraints``, the jobs, the
leaderboard and the winner read it here).

``val_loss`` and the trial's own figures come from training; the ``val_*`` answer metrics
from greedy answers to the validation questions at the end of a trial
(:mod:`sweep.evaluation.val_answers`), each with ``<name>_se``, its standard error over
the questions. The test split is never among them: it only reports.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Tuple

__all__ = ["DIRECTIONS", "ANSWER_METRICS", "direction", "parse_constraint", "constraint_value",
           "measures", "needs_answers"]

MINIMIZE, MAXIMIZE = "minimize", "maximize"
DIRECTIONS: Dict[str, str] = {
    "val_loss": MINIMIZE,  # the best validation loss of the trial, whole split
    "trainable_parameters": MINIMIZE,  # adapter size
    "train_seconds": MINIMIZE,
    "val_rougeL": MAXIMIZE,
    "val_bleu": MAXIMIZE,
    "val_f1": MAXIMIZE,
    "val_exact_match": MAXIMIZE,  # label accuracy, for classification data
    "val_citation_precision": MAXIMIZE,  # cited statutes the reference also cites
    "val_citation_recall": MAXIMIZE,
}
ANSWER_METRICS: List[str] = [k for k in DIRECTIONS if k.startswith("val_") and k != "val_loss"]
_CONSTRAINT = re.compile(r"^\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


def direction(name: str) -> str:
    if name not in DIRECTIONS:
        raise ValueError(f"unknown measure {name!r}; choose from {list(DIRECTIONS)}")
    return DIRECTIONS[name]


def _bound(text: Any) -> Tuple[str, float]:
    """``(">=", 0.5)`` from ``">= 0.5"``, or ValueError."""
    found = _CONSTRAINT.match(str(text))
    try:
        bound = float(found.group(2)) if found else math.nan
    except ValueError:
        bound = math.nan
    if not found or not math.isfinite(bound):
        raise ValueError(f"{text!r} is not a bound; write '>= 0.5' or '<= 600'")
    return found.group(1), bound


def parse_constraint(name: str, text: Any) -> Tuple[str, float]:
    """``(">=", 0.5)`` from ``">= 0.5"``; a ValueError naming the measure otherwise."""
    direction(name)
    try:
        return _bound(text)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def constraint_value(text: Any, value: float) -> float:
    """Optuna's constraint value (feasible when <= 0) for ``value`` against ``text``. An
    undefined value (NaN: no answer cited anything, say) does not satisfy a bound."""
    op, bound = _bound(text)
    if value is None or not math.isfinite(value):
        return max(abs(bound), 1.0)
    return bound - value if op == ">=" else value - bound


def measures(result: Any) -> Dict[str, float]:
    """Every measure of a finished trial (``sweep.trial.TrialResult``) by name."""
    out = {"val_loss": result.best_val_loss,
           "trainable_parameters": float(result.trainable_parameters),
           "train_seconds": result.train.train_seconds}
    out.update(getattr(result, "answers", None) or {})
    return out


def needs_answers(objectives: List[str], constraints: Mapping[str, Any],
                  setting: Any = None) -> bool:
    """Whether a trial answers the validation questions: ``eval.val_answers`` if set,
    else when an objective or a constraint is an answer metric."""
    if setting is not None:
        return bool(setting)
    return bool(set(ANSWER_METRICS) & (set(objectives) | set(constraints)))
