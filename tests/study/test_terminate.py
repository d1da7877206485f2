"""``hydra.sweeper.terminate``'s rules on made-up studies (the end-to-end stop:
tests/sweeps/test_search.py)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hydra_plugins.sweep_optuna._proposals import SweepAborted
from hydra_plugins.sweep_optuna._terminate import check_terminate, why_stop

NOISE = {"terminate": {"rule": "noise", "min_trials": 3, "patience": 3, "z": 1.0}}


def study_of(values, se=0.05, pruned=()):
    study = optuna.create_study()
    for i, v in enumerate(values):
        state = TrialState.PRUNED if i in pruned else TrialState.COMPLETE
        study.add_trial(create_trial(state=state, value=v, params={"x": float(i)},
                                     distributions={"x": FloatDistribution(0, 100)},
                                     user_attrs={"val_loss_se": se}))
    return study


def test_improvements_within_the_noise_do_not_reset_the_count() -> None:
    assert why_stop(study_of([2.5, 2.49, 2.48, 2.47]), NOISE, "val_loss") is not None
    assert why_stop(study_of([2.5, 2.49, 2.40, 2.47]), NOISE, "val_loss") is None  # 0.1 > 1 se
    assert why_stop(study_of([2.5, 2.49, 2.48]), NOISE, "val_loss") is None  # 2 since the best


def test_pruned_trials_count_as_spent_and_min_trials_holds() -> None:
    said = why_stop(study_of([2.5, 3.0, 3.1, 3.2], pruned=(1, 2, 3)), NOISE, "val_loss")
    assert said.startswith("the best val_loss (2.5000 +- 0.0500, trial 0) has not been beaten")
    late = {"terminate": {**NOISE["terminate"], "min_trials": 10}}
    assert why_stop(study_of([2.5, 2.5, 2.5, 2.5, 2.5]), late, "val_loss") is None


def test_off_by_default_and_bad_settings_are_one_line() -> None:
    assert why_stop(study_of([2.5] * 20), {}, "val_loss") is None
    for settings, message in [({"rule": "soon"}, "choose from"),
                              ({"rule": "noise", "patience": 0}, "patience=0: must be >= 1")]:
        with pytest.raises(SweepAborted, match=message):
            check_terminate({"terminate": settings}, 1)
    with pytest.raises(SweepAborted, match="needs one objective"):
        check_terminate({"terminate": {"rule": "noise"}}, 2)
