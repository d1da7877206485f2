"""Where sweep keeps things on disk: its cache folder, and the file behind a SQLite URL.
Light on purpose (no mlx): ``sweep/__init__.py`` and the sweeper plugin import it."""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

__all__ = ["cache_root", "cpu_id", "write_atomic", "sqlite_file", "ensure_sqlite_folder",
           "sqlite_init_lock", "sqlite_lock", "mask_password", "ensure_folder"]


def cache_root(cache_dir: Optional[str] = None) -> Path:
    """``cache_dir``, else ``$SWEEP_CACHE``, else ``~/.cache/sweep``."""
    root = cache_dir or os.environ.get("SWEEP_CACHE") or Path.home() / ".cache" / "sweep"
    return Path(root).expanduser()


def cpu_id(*extra: str) -> str:
    """A short id of this CPU model and its instruction sets (and of ``extra``): the key
    of what is built or measured for one CPU (fused kernels, the BLAS choice)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [l for l in text.splitlines() if l.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = []
    return hashlib.sha1("\n".join(lines + list(extra)).encode()).hexdigest()[:12]


def write_atomic(path: Path, text: str, mode: Optional[int] = None) -> None:
    """Write ``text`` to a staging file beside ``path`` and rename it into place, so a
    concurrent reader (another worker process) sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text)
    if mode is not None:
        staging.chmod(mode)
    staging.replace(path)


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of a ``sqlite:///...`` URL (relative or absolute), else None."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url[len("sqlite:///"):]).expanduser().resolve()


def ensure_folder(folder: Path, key: str, value: str) -> None:
    """Makes ``folder``; one that cannot be made (a file in the way, no permission) is
    an InputError naming ``key=value``."""
    from sweep.errors import InputError

    folder = Path(folder).expanduser().absolute()
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise InputError(f"{key}={value}: {blocking} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"{key}={value}: cannot create {folder} "
                         f"({error.strerror or type(error).__name__})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{key}={value}: {folder} is not writable")


def ensure_sqlite_folder(url: str, key: str = "the database URL") -> None:
    """SQLite creates the database file but not its folder; a folder that cannot be
    made (a file in the way, no permission) is an InputError naming ``key``."""
    path = sqlite_file(url)
    if path is not None:
        ensure_folder(path.parent, key, url)


@contextmanager
def sqlite_init_lock(url: str) -> Iterator[None]:
    """Meanwhile no other process opens the same SQLite database through this lock.

    MLflow and Optuna create their tables (alembic migrations) the first time a process
    opens a fresh database; two processes doing it at once fail with ``UNIQUE constraint
    failed: alembic_version``. Hold this around the first use of a store. Other stores: no
    lock here (sweep.study.locks.init_lock takes an advisory lock for PostgreSQL)."""
    with sqlite_lock(url, "init-lock"):
        yield


@contextmanager
def sqlite_lock(url: str, suffix: str) -> Iterator[None]:
    """An ``flock`` on ``<database>.<suffix>`` beside a SQLite database; no lock for
    other URLs."""
    path = sqlite_file(url)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f"{path.name}.{suffix}"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mask_password(url: str) -> str:
    """``scheme://user:***@host/...``: a URL as it may be shown (messages, logs)."""
    import re

    return re.sub(r"(//[^/:@]+):[^/@]*@", r"\1:***@", url)
