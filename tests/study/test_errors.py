"""The error classes and what the commands make of them; a job that cannot beat stops."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest

from sweep.errors import InputError, SweepError, TrialFailed, first_line


def test_bad_input_and_a_failed_trial_are_siblings_with_their_own_exit_codes() -> None:
    assert not issubclass(SweepError, ValueError)  # generic handlers of library errors
    assert issubclass(InputError, SweepError) and issubclass(TrialFailed, SweepError)
    assert not issubclass(TrialFailed, InputError) and not issubclass(InputError, TrialFailed)
    assert (InputError.exit_code, TrialFailed.exit_code) == (2, 3)


def test_first_line_prefers_the_drivers_own_error() -> None:
    class Wrapped(Exception):
        orig = RuntimeError("connection refused\n\tIs the server running?")

    assert first_line(Wrapped("(psycopg.OperationalError) long\nstatement")) == \
        "connection refused"
    assert first_line(ValueError("")) == ""


def test_a_job_that_cannot_beat_past_the_grace_period_stops(tmp_path: Path, caplog) -> None:
    from sweep.config.schema import TrialLink
    from sweep.study.link import (GRACE_ATTR, HEARTBEAT_ATTR, HeartbeatLost, open_link)
    from sweep.training.events import TrainReport

    url = f"sqlite:///{tmp_path}/o.db"
    study = optuna.create_study(study_name="s", storage=url)
    study.set_user_attr(HEARTBEAT_ATTR, 1)
    study.set_user_attr(GRACE_ATTR, 1)
    trial = study.ask()
    link = open_link(TrialLink(storage=url, study_name="s", number=trial.number))
    try:
        listener = link.listener
        report = TrainReport(step=1, iteration=1, train_loss=1.0, learning_rate=1e-4,
                             grad_norm=1.0, tokens_per_sec=1.0, trained_tokens=1,
                             peak_memory_gb=0.0)
        listener.on_train_report(report)  # beating: nothing happens

        def refuse(trial_id: int) -> None:
            raise ConnectionError("the database went away")

        link.storage.record_heartbeat = refuse
        deadline = time.monotonic() + 10
        while link.lost is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert isinstance(link.lost, HeartbeatLost) and isinstance(link.lost, TrialFailed)
        assert "grace_period=1" in str(link.lost)
        assert "heartbeat missed (ConnectionError: the database went away)" in caplog.text
        with pytest.raises(HeartbeatLost):
            listener.on_train_report(report)
    finally:
        link.close()


def test_the_trial_runner_is_chosen_by_config_and_a_bad_one_is_named(compose_cfg) -> None:
    from sweep.cli.sweep import trial_runner
    from sweep.testing.zero_cost import TARGET, run
    from sweep.trial import run_trial

    assert trial_runner(compose_cfg()) is run_trial  # no environment variable involved
    assert trial_runner(compose_cfg(f"runner._target_={TARGET}")) is run
    with pytest.raises(InputError, match=r"runner._target_=sweep.nope.run: not a function"):
        trial_runner(compose_cfg("runner._target_=sweep.nope.run"))
