"""Optuna's gRPC storage proxy in front of a study's database, for many workers
(``sweep-proxy``).

Each worker that opens a database keeps its own connections and reads every trial of the
study each time it asks for one; through the proxy, the workers share the proxy's one pool
of connections, and each caches the finished trials and reads only what changed. The
server is Optuna's own (``optuna.storages.run_grpc_proxy_server``); this module creates
the tables first (under the same lock as a sweep's first open), says where it listens, and
stops cleanly on SIGTERM or Ctrl-C. Workers then use
``hydra.sweeper.storage=grpc://HOST:PORT``.

The proxy has no authentication and no TLS (Optuna's is an insecure channel): anyone who
reaches its port can read and write the study. It listens on 127.0.0.1 unless told
otherwise; on a cluster, bind it to the private network the workers share, or keep it on
127.0.0.1 and give each machine an SSH tunnel (``ssh -N -L 13000:127.0.0.1:13000 host``).
"""

from __future__ import annotations

import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["serve"]

log = logging.getLogger("sweep.study.proxy")


class _Stopped(Exception):
    pass


def _stop(signum: int, frame: Any) -> None:
    raise _Stopped(signal.Signals(signum).name)


def serve(storage_url: str, host: str, port: int, threads: int) -> None:
    """Serve ``storage_url`` (a database URL) on ``host:port`` until SIGTERM or Ctrl-C."""
    import optuna
    from optuna.storages import run_grpc_proxy_server

    from sweep.errors import InputError, first_line
    from sweep.study.locks import init_lock
    from sweep.paths import ensure_sqlite_folder, mask_password
    from sweep.study.storages import is_grpc  # (and its warning filter)

    from sweep.secrets import refuse_in_values

    refuse_in_values([("hydra.sweeper.storage", storage_url)])  # e.g. from a YAML file
    shown = mask_password(storage_url)
    if is_grpc(storage_url):
        raise InputError(f"hydra.sweeper.storage={shown}: sweep-proxy serves a database "
                         "(sqlite:///..., postgresql://...), not another proxy")
    ensure_sqlite_folder(storage_url, "hydra.sweeper.storage")
    try:
        with init_lock(storage_url):
            # get_storage, not RDBStorage: its cache saves the database a read per request
            storage = optuna.storages.get_storage(storage_url)
    except Exception as error:  # an unreachable server, a bad URL, a missing driver
        raise InputError(f"hydra.sweeper.storage={shown}: cannot open the study's storage "
                         f"({type(error).__name__}: {mask_password(first_line(error))})") from None
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise InputError("sweep-proxy needs grpcio: pip install 'lora-sweep[proxy]'") from None
    previous = signal.signal(signal.SIGTERM, _stop)
    log.info("serving %s on grpc://%s:%d (%d threads); workers: "
             "hydra.sweeper.storage=grpc://%s:%d", shown, host, port, threads, host, port)
    try:
        run_grpc_proxy_server(storage, host=host, port=port,
                              thread_pool=ThreadPoolExecutor(max_workers=threads))
    except (KeyboardInterrupt, _Stopped) as why:
        log.info("stopped (%s)", why or "Ctrl-C")
    finally:
        signal.signal(signal.SIGTERM, previous)
