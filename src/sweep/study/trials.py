"""The states of a study's trials, as every sweep process and ``sweep-status`` read them:
which configurations are taken, which trials were never launched, whose process died,
and how a trial is ended FAIL without the sampler's hooks."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.study._compat import tell_quietly

__all__ = ["TAKEN", "NOT_RUN_ATTR", "ran", "tell_fail", "tell_not_run", "owner_died",
           "frozen_trial"]

# configurations not to propose again (a FAILed one may rerun)
TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
# user attr of a trial that was asked but never launched (n_trials already taken by others,
# the last configurations taken): FAIL in Optuna, left out of counts, rates and reports
NOT_RUN_ATTR = "not_run"


def ran(t: FrozenTrial) -> bool:
    """False for a trial that was asked but never launched (``NOT_RUN_ATTR``)."""
    return NOT_RUN_ATTR not in t.user_attrs


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
