"""An Optuna storage from a URL: a database (``sqlite:///...``, ``postgresql://...``: an
``RDBStorage``) or Optuna's gRPC storage proxy (``grpc://host:port``: a
``GrpcStorageProxy``, in front of a database; ``sweep-proxy`` serves one).

The proxy keeps one pool of database connections for any number of workers and caches
finished trials in each worker, so that asking for a trial does not read the whole study
from the database every time. It has no heartbeats (``GrpcStorageProxy`` is not a
``BaseHeartbeat``), so a job behind it beats by writing the time into its trial
(:data:`BEAT_ATTR`) and a sweep fails a RUNNING trial whose last beat is older than the
grace period (:func:`silent_trials`): a worker lost with its machine is found as it is
on a database. That clock is the workers' own: keep the machines' clocks in sync (NTP)
to well within ``hydra.sweeper.grace_period``.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Iterable, List, Optional, Tuple

# Optuna 5 marks its gRPC proxy experimental (since 4.2); said once in docs/many-machines.md,
# not per job
warnings.filterwarnings("ignore", message=".*(GrpcStorageProxy|run_grpc_proxy_server) is experimental")

__all__ = ["GRPC_SCHEME", "BEAT_ATTR", "grpc_address", "is_grpc", "open_url", "silent_trials"]

GRPC_SCHEME = "grpc://"
BEAT_ATTR = "beat_at"  # trial user attr behind the proxy: the job's last beat (Unix time)
CONNECT_TIMEOUT = 10.0  # seconds to wait for a proxy to answer


def is_grpc(url: str) -> bool:
    return url.startswith(GRPC_SCHEME)


def grpc_address(url: str) -> Tuple[str, int]:
    """``grpc://host:port`` -> (host, port); ValueError saying what is wrong otherwise."""
    rest = url[len(GRPC_SCHEME):].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise ValueError(f"'{url}' is not grpc://HOST:PORT (Optuna's gRPC storage proxy)")
    return host.strip("[]"), int(port)


def open_url(url: str, *, heartbeat_interval: Optional[int] = None,
             grace_period: Optional[int] = None, stale_callback: Any = None,
             skip_table_creation: bool = False, timeout: float = CONNECT_TIMEOUT):
    """The storage behind ``url``; a proxy must answer within ``timeout`` seconds
    (ConnectionError otherwise; a database's driver raises its own errors)."""
    import optuna

    if is_grpc(url):
        from optuna.storages import GrpcStorageProxy

        host, port = grpc_address(url)
        storage = GrpcStorageProxy(host=host, port=port)
        try:
            storage.wait_server_ready(timeout=timeout)
        except ConnectionError:
            storage.close()
            raise ConnectionError(f"no gRPC storage proxy answered at {host}:{port} within "
                                  f"{timeout:.0f} s (is sweep-proxy running?)") from None
        return storage
    kwargs: dict = {"skip_table_creation": skip_table_creation}
    if heartbeat_interval is not None:
        kwargs.update(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      heartbeat_stale_trial_callback=stale_callback)
    return optuna.storages.RDBStorage(url, **kwargs)


def silent_trials(trials: Iterable[Any], grace_period: float,
                  now: Optional[float] = None) -> List[Any]:
    """The RUNNING trials (of a storage without heartbeats) whose job beat last more than
    ``grace_period`` seconds ago. A trial that has not beaten yet is not one of them."""
    now = time.time() if now is None else now
    return [t for t in trials
            if isinstance(t.user_attrs.get(BEAT_ATTR), (int, float))
            and now - float(t.user_attrs[BEAT_ATTR]) > grace_period]
