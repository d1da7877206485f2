"""Each assumption ``sweep.study._compat`` makes about Optuna's or Hydra's internals, checked
on the installed versions: a failure here names what an upgrade broke."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from sweep.study import _compat

SPACE = {"lr": FloatDistribution(1e-5, 1e-2, log=True), "rank": IntDistribution(4, 64, step=4),
         "alpha": CategoricalDistribution([8, 16, 32]), "fixed": IntDistribution(2, 2)}


def test_rdb_storages_keep_heartbeats_and_the_grpc_proxy_does_not(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=1)
    assert _compat.has_heartbeat(rdb), "optuna.storages._heartbeat.BaseHeartbeat moved"
    assert not _compat.has_heartbeat(optuna.storages.InMemoryStorage())
    from optuna.storages import GrpcStorageProxy
    from optuna.storages._heartbeat import BaseHeartbeat

    assert not issubclass(GrpcStorageProxy, BaseHeartbeat)  # its jobs beat into the trial


def test_an_enqueued_trial_keeps_its_params_in_fixed_params() -> None:
    study = optuna.create_study()
    study.enqueue_trial({"lr": 1e-3, "rank": 8})
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.params == {}
    assert _compat.enqueued_params(waiting) == {"lr": 1e-3, "rank": 8}, \
        "study.enqueue_trial no longer writes system_attrs['fixed_params']"


def test_an_unrecorded_draw_asks_the_sampler_as_trial_suggest_does() -> None:
    def suggested(seed: int):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        trial = study.ask()
        return {"lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
                "rank": trial.suggest_int("rank", 4, 64, step=4),
                "alpha": trial.suggest_categorical("alpha", [8, 16, 32]),
                "fixed": trial.suggest_int("fixed", 2, 2)}

    study = optuna.create_study()
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    for seed in range(5):
        drawn = _compat.draw_unrecorded(optuna.samplers.RandomSampler(seed=seed), study,
                                        frozen, SPACE)
        assert drawn == suggested(seed), "Trial.suggest_* samples differently now"
    assert study.get_trials(deepcopy=False)[0].params == {}  # nothing recorded
    with _compat.suggesting(study, {"lr": 3e-4, "rank": 16, "alpha": 32, "fixed": 2}):
        trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        trial.suggest_int("rank", 4, 64, step=4)
    assert study.get_trials(deepcopy=False)[0].params == {"lr": 3e-4, "rank": 16}
    assert isinstance(study.sampler, optuna.samplers.TPESampler)  # put back


def test_a_quiet_tell_runs_no_sampler_hook() -> None:
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 2]}))
    for _ in range(2):
        trial = study.ask()
        trial.suggest_categorical("x", [1, 2])
        _compat.tell_quietly(study, trial, state=TrialState.FAIL)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    trial = study.ask()  # the grid is used up: its after_trial hook would call study.stop()
    with pytest.raises(RuntimeError):
        study.tell(trial, state=TrialState.FAIL)
    assert isinstance(study.sampler, optuna.samplers.GridSampler)


def test_heartbeats_are_read_from_optunas_tables(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/o.db", heartbeat_interval=5)
    study = optuna.create_study(storage=storage, study_name="s")
    study.ask()
    study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("s"), 1)
    storage.record_heartbeat(trial_id)
    ages = _compat.heartbeat_ages(storage, storage.get_study_id_from_name("s"))
    assert list(ages) == [1], "the trial_heartbeats / trials tables changed"
    assert -2 <= ages[1] < 30


def test_a_failed_hydra_job_keeps_its_exception_in_return_value() -> None:
    from hydra.core.utils import JobReturn, JobStatus

    error = RuntimeError("the job died")
    result = JobReturn(status=JobStatus.FAILED, _return_value=error)
    assert _compat.job_error(result) is error, "JobReturn._return_value is gone"
    with pytest.raises(RuntimeError):  # why the public property cannot be used
        result.return_value
