"""The states of a study's trials, as every sweep process and ``sweep-status`` read them:
which configurations are taken, which trials were never launched, whose process died,
and how a trial is ended FAIL without the sampler's hooks."""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Union

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.study._compat import tell_quietly

__all__ = ["TAKEN", "NOT_RUN_ATTR", "COPIED_ATTR", "ran", "tell_fail", "tell_not_run", "owner_died",
           "frozen_trial", "CHECKPOINT_ATTR", "RESUMABLE_ATTR", "EXIT_CODE_ATTR", "retried",
           "retry_stopped"]

# configurations not to propose again (a FAILed one may rerun)
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
# user attr of a trial that was asked but never launched (n_trials already taken by others,
# the last configurations taken): FAIL in Optuna, left out of counts, rates and reports
NOT_RUN_ATTR = "not_run"
COPIED_ATTR = "copied_from"  # user attr: "<study>#<number>" of a warm start's copy


def ran(t: FrozenTrial) -> bool:
    """False for a trial that was asked but never launched (``NOT_RUN_ATTR``), or that
    warm start copied from another study (``COPIED_ATTR``: the sampler and pruner learn
    from it, but it is not one of this study's trials to count, list or win)."""
    return NOT_RUN_ATTR not in t.user_attrs and COPIED_ATTR not in t.user_attrs


def tell_fail(study: optuna.Study, trial: Union[optuna.trial.Trial, int],
              reason: Optional[str] = None) -> None:
    """Ends ``trial`` as FAIL (if it is still running), with ``reason`` as its fail_reason
    (needs the Trial). No sampler hook runs: GridSampler's after_trial calls study.stop(),
    which raises RuntimeError outside optimize(); on FAIL no other sampler's hook acts."""
    if reason is not None:
        trial.set_user_attr("fail_reason", reason[:1000])
    tell_quietly(study, trial, state=TrialState.FAIL)


def tell_not_run(study: optuna.Study, trial: optuna.trial.Trial, reason: str) -> None:
    """FAIL, marked as a trial that was never launched (``ran`` is False for it)."""
    trial.set_user_attr(NOT_RUN_ATTR, True)
    tell_fail(study, trial, reason)


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def owner_died(t: FrozenTrial, host: str) -> bool:
    """The trial's job or sweeper process was on this host and is gone."""
    owner_pid = t.user_attrs.get("pid", t.user_attrs.get("sweeper_pid"))
    owner_host = t.user_attrs.get("host", t.user_attrs.get("sweeper_host"))
    if owner_pid is None:  # just asked: its host is written before its pid (CI: a trial
        return False       # failed by another worker in between, mid-proposal)
    return owner_host == host and not _pid_alive(owner_pid)


def frozen_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of ``study`` as stored now."""
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


# -- trials that stopped with a checkpoint go on ----------------------------------------

CHECKPOINT_ATTR = "checkpoint"  # user attr: the trial's newest whole training state
RESUMABLE_ATTR = "resumable"  # user attr, False when the trial failed of itself
EXIT_CODE_ATTR = "exit_code"  # user attr of a FAIL trial: 2 bad input, 3 failed (sweep.errors)
# what a retry does not inherit: the dead process's identity and its failure
NOT_INHERITED = ("fail_reason", "host", "pid", "sweeper_host", "sweeper_pid", RESUMABLE_ATTR,
                 EXIT_CODE_ATTR)


def retried(t: FrozenTrial) -> Optional[int]:
    """The number of the trial ``t`` continues, or None."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with _quiet():
        return RetryHeartbeatStaleTrialCallback.retried_trial_number(t)


def retry_stopped(study: optuna.Study, max_retry: int) -> List[int]:
    """FAIL trials that were stopped (killed, preempted, their storage lost) after a
    checkpoint, and not retried yet -> a WAITING copy (Optuna's
    ``RetryHeartbeatStaleTrialCallback``, with the reported values) that the next free
    worker takes and resumes from the checkpoint. A trial that failed of itself (a
    diverged loss, a bug) is not retried; nor one retried ``max_retry`` times."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    trials = study.get_trials(deepcopy=False)
    with _quiet():
        done = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    again = []
    for t in trials:
        if (t.state != TrialState.FAIL or t.number in done or CHECKPOINT_ATTR not in t.user_attrs
                or not t.user_attrs.get(RESUMABLE_ATTR, True)):
            continue
        copy = FrozenTrial(
            number=t.number, state=t.state, value=None, values=t.values,
            datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
            params=t.params, distributions=t.distributions,
            user_attrs={k: v for k, v in t.user_attrs.items() if k not in NOT_INHERITED},
            system_attrs=t.system_attrs, intermediate_values=t.intermediate_values,
            trial_id=0)  # unused: the callback adds a new trial
        before = len(study.get_trials(deepcopy=False))
        with _quiet():
            RetryHeartbeatStaleTrialCallback(max_retry=max_retry,
                                             inherit_intermediate_values=True)(study, copy)
        if len(study.get_trials(deepcopy=False)) > before:
            again.append(t.number)
    return again


@contextmanager
def _quiet() -> Iterator[None]:
    """Optuna marks the retry callback experimental; it is the library's way to retry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
