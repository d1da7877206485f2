"""What a sweep can optimise or constrain (sweep.study.objectives), and the winner among
feasible trials of its own (sweep.study.winner)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep.study.objectives import (ANSWER_METRICS, constraint_value, direction, needs_answers,
                                    parse_constraint)
from sweep.study.winner import best, best_trials


def test_directions_and_bounds() -> None:
    assert direction("val_loss") == "minimize" and direction("val_citation_precision") == "maximize"
    assert "val_loss" not in ANSWER_METRICS and "val_exact_match" in ANSWER_METRICS
    assert parse_constraint("val_f1", ">= 0.5") == (">=", 0.5)
    assert parse_constraint("train_seconds", "<=600") == ("<=", 600.0)
    assert constraint_value(">= 0.5", 0.7) == pytest.approx(-0.2)  # feasible: <= 0
    assert constraint_value("<= 600", 700) == pytest.approx(100)
    assert constraint_value(">= 0.5", math.nan) > 0  # nothing cited: not met
    for name, text, message in [("val_f1", "> 0.5", "is not a bound"),
                                ("val_f1", ">= nan", "is not a bound"),
                                ("val_politeness", ">= 1", "unknown measure")]:
        with pytest.raises(ValueError, match=message):
            parse_constraint(name, text)


def test_answers_are_computed_only_when_needed_unless_asked() -> None:
    assert not needs_answers(["val_loss"], {})
    assert needs_answers(["val_loss"], {"val_citation_precision": ">= 0.5"})
    assert needs_answers(["val_loss", "val_rougeL"], {})
    assert needs_answers(["val_loss"], {}, True) and not needs_answers(["val_rougeL"], {}, False)


def _trial(value, constraint=None, copied=False):
    attrs = {"copied_from": "first#0"} if copied else {}
    t = create_trial(state=TrialState.COMPLETE, value=value, params={"x": value},
                     distributions={"x": FloatDistribution(0, 10)}, user_attrs=attrs)
    if constraint is not None:
        t.set_constraint("val_citation_precision >= 0.5", constraint)
    return t


def test_the_winner_is_the_best_feasible_trial_of_the_study_itself() -> None:
    study = optuna.create_study()
    study.add_trials([_trial(1.0, copied=True), _trial(2.0, constraint=0.3),
                      _trial(2.5, constraint=-0.1), _trial(3.0, constraint=-0.2)])
    assert best(study).value == 2.5
    infeasible = optuna.create_study()
    infeasible.add_trials([_trial(2.0, constraint=0.3)])
    assert best(infeasible) is None and best_trials(infeasible) == []


def test_a_pareto_front_in_mixed_directions() -> None:
    study = optuna.create_study(directions=["minimize", "maximize"])
    for loss, precision in [(2.0, 0.1), (2.2, 0.5), (2.3, 0.4), (2.5, 0.8)]:
        study.add_trial(create_trial(state=TrialState.COMPLETE, values=[loss, precision],
                                     params={"x": loss},
                                     distributions={"x": FloatDistribution(0, 10)}))
    assert [t.values for t in best_trials(study)] == [[2.0, 0.1], [2.2, 0.5], [2.5, 0.8]]
