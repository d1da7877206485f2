"""One definition of a study's winner, for one objective and for several."""

from __future__ import annotations

import optuna
from optuna.trial import create_trial

from sweep.study.winner import best, best_trials


def study_of(directions, values):
    study = optuna.create_study(directions=directions)
    for v in values:
        study.add_trial(create_trial(values=list(v) if isinstance(v, tuple) else [v]))
    return study


def test_no_completed_trial_means_no_winner() -> None:
    study = optuna.create_study()
    assert best(study) is None and best_trials(study) == []


def test_one_objective_is_optunas_best_trial_in_its_direction() -> None:
    assert best(study_of(["minimize"], [2.0, 1.5, 3.0])).number == 1
    assert best(study_of(["maximize"], [0.2, 0.9, 0.5])).number == 1


def test_several_objectives_give_the_front_ordered_by_the_first_in_its_direction() -> None:
    # maximize the first (e.g. citation precision), minimize the second (val_loss)
    study = study_of(["maximize", "minimize"], [(0.5, 2.0), (0.9, 2.5), (0.4, 3.0), (0.7, 1.9)])
    assert [t.number for t in best_trials(study)] == [1, 3]  # trial 0, 2 are dominated
    assert best(study).number == 1  # not the minimum of values[0]
