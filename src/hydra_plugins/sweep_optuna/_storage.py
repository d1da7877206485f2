"""The study's storage: opening it (one line naming ``hydra.sweeper.storage`` when it
cannot be), and telling a storage that stopped answering mid-sweep (a restarted or
unreachable PostgreSQL) from other errors, so the sweep stops with one line saying so."""

from __future__ import annotations

from typing import Optional

import logging

import optuna

from sweep.errors import first_line
from sweep.study.locks import init_lock
from sweep.paths import ensure_sqlite_folder, mask_password

from hydra_plugins.sweep_optuna._proposals import SweepAborted

__all__ = ["open_storage", "storage_lost", "lost_message", "on_stale_trial", "fail_stale"]

log = logging.getLogger("sweep.sweeper")



def open_storage(url: str, heartbeat_interval: int, grace_period: int
                 ) -> optuna.storages.BaseStorage:
    """A database (``RDBStorage`` with heartbeats) or a gRPC storage proxy
    (``grpc://host:port``, see :mod:`sweep.study.storages`)."""
    from sweep.errors import SweepError
    from sweep.study.storages import open_url

    try:
        ensure_sqlite_folder(url, "hydra.sweeper.storage")
    except SweepError as error:
        raise SweepAborted(str(error)) from None
    try:
        with init_lock(url):  # creating the tables: one process at a time
            return open_url(url, heartbeat_interval=heartbeat_interval,
                            grace_period=grace_period, stale_callback=on_stale_trial)
    except Exception as error:  # an unreachable server, a bad URL, a missing driver
        raise SweepAborted(f"hydra.sweeper.storage={mask_password(url)}: cannot open the "
                           f"study's storage ({type(error).__name__}: {first_line(error)})"
                           ) from None


def on_stale_trial(study: optuna.Study, trial) -> None:
    """Optuna set ``trial`` FAIL: no heartbeat for the storage's grace period."""
    log.warning("trial %d sent no heartbeat for hydra.sweeper.grace_period s (its process "
                "died, on %s): now FAIL", trial.number,
                trial.user_attrs.get("host", trial.user_attrs.get("sweeper_host", "?")))


def fail_stale(study: optuna.Study, storage: optuna.storages.BaseStorage,
               grace_period: int) -> None:
    """Trials whose job went silent -> FAIL: Optuna's heartbeats on a database; on a gRPC
    proxy (no heartbeats), the beat each job writes into its trial (``sweep.study.storages``)."""
    from sweep.study.storages import silent_trials
    from sweep.study._compat import has_heartbeat

    from sweep.study.trials import tell_fail

    if has_heartbeat(storage):
        optuna.storages.fail_stale_trials(study)  # calls on_stale_trial
        return
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in silent_trials(running, grace_period):
        tell_fail(study, t.number)
        on_stale_trial(study, t)


def storage_lost(error: BaseException) -> Optional[BaseException]:
    """The database error behind ``error`` if the storage stopped answering (its
    connection failed or was cut), else None."""
    import sqlalchemy.exc

    seen: Optional[BaseException] = error
    while seen is not None:  # a stop (SIGTERM, Ctrl-C) is a stop, whatever it interrupted
        if isinstance(seen, KeyboardInterrupt):
            return None
        seen = seen.__cause__ or seen.__context__
    seen = error
    while seen is not None:
        if isinstance(seen, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
            return seen
        seen = seen.__cause__
    return None


def lost_message(url: str, cause: BaseException) -> str:
    return (f"hydra.sweeper.storage={mask_password(url)}: the study's storage stopped "
            f"answering ({first_line(cause)}). Finished trials are kept; run the same "
            "command when it is back: the trial that was running is recorded as FAIL and "
            "the study goes on")
