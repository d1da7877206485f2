"""The winner of a study, one definition for every reader (the leaderboard, the parent
run, ``target=<sweep folder>``, the held-out evaluation and the registry).

One objective: Optuna's ``study.best_trial``. Several: the Pareto front
(``study.best_trials``), ordered by the first objective in its direction (then by trial
number), whose first trial stands for the front where one adapter is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["best_trials", "best"]


def best_trials(study: "optuna.Study") -> List["FrozenTrial"]:
    """The winners: ``[best_trial]`` for one objective, the Pareto front for several;
    ``[]`` before any trial completed."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    sign = 1.0 if study.directions[0] == StudyDirection.MINIMIZE else -1.0
    return sorted(study.best_trials, key=lambda t: (sign * t.values[0], t.number))


def best(study: "optuna.Study") -> Optional["FrozenTrial"]:
    """The one winner (see the module docstring), or None before any trial completed."""
    front = best_trials(study)
    return front[0] if front else None
