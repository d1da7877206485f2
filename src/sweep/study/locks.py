"""Locks between the processes (and machines) that share one store, taken in the store's
own database, because Optuna's and MLflow's storages have none:

- :func:`init_lock`: around the first open of a store, which creates its tables. Processes
  doing it at once fail: SQLite with ``UNIQUE constraint failed: alembic_version``,
  PostgreSQL with ``duplicate key value violates unique constraint
  "pg_type_typname_nsp_index"`` (concurrent ``CREATE TABLE``; three workers on a fresh
  database, tests/sweeps/test_shared_setup.py).
- :func:`study_lock`: around the steps a finished sweep takes once (the report, the
  held-out evaluation and the registration of its winner) when several processes end it.

A PostgreSQL storage takes an advisory lock, held by one connection and released by the
server if that process dies; a SQLite one an ``flock`` on a file beside the database (a
SQLite store is on one machine). Others (MySQL, Optuna's gRPC proxy, an MLflow server,
which creates its own tables) take none: the guarded steps check what is done first, so a
race there costs repeated work, never a wrong record.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from typing import Iterator

from sweep.paths import sqlite_file, sqlite_init_lock, sqlite_lock

__all__ = ["init_lock", "study_lock", "advisory_lock"]

log = logging.getLogger("sweep.study.locks")


def _key(name: str) -> int:
    """A signed 64-bit advisory lock key."""
    return int.from_bytes(hashlib.sha256(f"sweep:{name}".encode()).digest()[:8], "big",
                          signed=True)


def _is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextmanager
def advisory_lock(url: str, name: str, waiting: str = "") -> Iterator[None]:
    """PostgreSQL's session advisory lock ``name`` in the database of ``url``."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            key = {"k": _key(name)}
            if not connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                      key).scalar():
                if waiting:
                    log.info("%s", waiting)
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), key)
            try:
                yield
            finally:
                try:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), key)
                except Exception:  # noqa: BLE001  (a lost connection released it)
                    pass
    finally:
        engine.dispose()


@contextmanager
def init_lock(url: str) -> Iterator[None]:
    if sqlite_file(url) is not None:
        with sqlite_init_lock(url):
            yield
    elif _is_postgres(url):
        with advisory_lock(url, "init"):
            yield
    else:
        yield


@contextmanager
def study_lock(storage_url: str, study_name: str) -> Iterator[None]:
    path = sqlite_file(storage_url)
    waiting = f"waiting for another process to finish study {study_name}'s last steps"
    if path is not None:
        with sqlite_lock(storage_url, f"{_key(study_name) & 0xFFFFFFFF:08x}.lock"):
            yield
    elif _is_postgres(storage_url):
        with advisory_lock(storage_url, f"study:{study_name}", waiting):
            yield
    else:
        yield
