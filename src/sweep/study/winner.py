"""The winner of a study, one definition for every reader (the leaderboard, the parent
run, ``target=<sweep folder>``, the held-out evaluation and the registry).

One objective: the best value (Optuna's ``study.best_trial``). Several: the Pareto front
(``study.best_trials``), ordered by the first objective in its direction (then by trial
number), whose first trial stands for the front where one adapter is needed. Computed here
rather than by Optuna so that only the study's own trials compete (not warm start's
copies) and only feasible ones (``hydra.sweeper.constraints``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = ["best_trials", "best", "feasible"]


def best_trials(study: "optuna.Study") -> List["FrozenTrial"]:
    """The winners: ``[best trial]`` for one objective, the Pareto front for several;
    ``[]`` before any trial completed. Only the study's own feasible trials compete: not
    those warm start copied from another study (they have no adapter here), nor those that
    miss a constraint (``hydra.sweeper.constraints``)."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    from sweep.study.trials import ran

    signs = [1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions]
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if ran(t) and feasible(t)]
    key = [lambda t, i=i: signs[i] * t.values[i] for i in range(len(signs))]
    if len(signs) == 1:
        return [min(trials, key=lambda t: (key[0](t), t.number))] if trials else []

    def dominates(a, b) -> bool:
        return all(k(a) <= k(b) for k in key) and any(k(a) < k(b) for k in key)

    front = [t for t in trials if not any(dominates(o, t) for o in trials)]
    return sorted(front, key=lambda t: (key[0](t), t.number))


def feasible(t: "FrozenTrial") -> bool:
    """Whether ``t`` meets every constraint set on it (Optuna: all values <= 0)."""
    return all(v <= 0 for v in t.constraints.values())


def best(study: "optuna.Study") -> Optional["FrozenTrial"]:
    """The one winner (see the module docstring), or None before any trial completed."""
    front = best_trials(study)
    return front[0] if front else None
