"""No password in a config value: credentials come from the environment or a file.

A value such as ``postgresql://user:pw@host/db`` given to ``hydra.sweeper.storage`` or
``mlflow.tracking_uri`` would be copied to places this project does not control: Hydra's
``.hydra/`` dumps and ``multirun.yaml``, the overrides Hydra's launcher logs for every
job, each trial's MLflow params and config artifact, and MLflow's own "View run at"
lines. Masking some of those copies still leaks the others, so such a value is refused
(one line naming the key, exit 2) before anything is written, with where the password
goes instead. The drivers read those places themselves:

- PostgreSQL (psycopg through SQLAlchemy, for Optuna and MLflow): ``PGPASSWORD`` or a
  password file (``~/.pgpass``, or ``PGPASSFILE``), read by libpq;
- an MLflow tracking server (``http(s)://``): ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``), read by MLflow's client;
- MySQL: an option file (``?read_default_file=~/.my.cnf``).

Command-line overrides are checked before Hydra writes its first file
(:func:`refuse_in_argv`); composed configs (a password in a YAML file, or put together
with ``${oc.env:...}``) before a trial or a sweep starts (:func:`refuse_in_values`).
"""

from __future__ import annotations

import re
import sys
from typing import Any, Iterable, Mapping, Optional, Tuple

from sweep.errors import InputError

__all__ = ["SecretInConfig", "password_in", "refuse_in_values", "refuse_in_argv"]

# scheme://user:password@ (the password may be empty only if written as ':@', ignored)
_URL_PASSWORD = re.compile(r"\b([a-z][a-z0-9+.\-]*)://[^/\s:@]*:([^/\s@]+)@", re.IGNORECASE)


class SecretInConfig(InputError):
    """A config value holds a password; the message names the key, never the password."""


def password_in(value: Any) -> Optional[str]:
    """The URL scheme of ``value`` if it holds ``scheme://user:password@``, else None."""
    if not isinstance(value, str):
        return None
    match = _URL_PASSWORD.search(value)
    return match.group(1).lower() if match else None


def _where(scheme: str) -> str:
    if scheme.startswith("postgres"):
        return "PGPASSWORD or ~/.pgpass (libpq reads them)"
    if scheme.startswith("mysql"):
        return "an option file (?read_default_file=~/.my.cnf)"
    if scheme in ("http", "https"):
        return "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
    return "the environment or a file the driver reads"


def _message(key: str, scheme: str) -> str:
    return (f"{key}: the {scheme}:// URL holds a password, which would be copied to Hydra's "
            ".hydra/ files, the logs and every MLflow run; leave it out of the URL and give "
            f"it as {_where(scheme)}")


def refuse_in_values(items: Iterable[Tuple[str, Any]]) -> None:
    """Raises :class:`SecretInConfig` for the first ``(key, value)`` holding a password."""
    for key, value in items:
        scheme = password_in(value)
        if scheme:
            raise SecretInConfig(_message(key, scheme))


def walk(node: Any, prefix: str = "") -> Iterable[Tuple[str, Any]]:
    """``(dotted key, leaf)`` of nested mappings and lists (a resolved config)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from walk(value, f"{prefix}{key}.")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from walk(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def refuse_in_argv(prog: str, argv: Optional[Iterable[str]] = None) -> None:
    """Exits with status 2 and one line if a command-line override holds a password:
    before Hydra copies the command line into its files and logs."""
    for arg in sys.argv[1:] if argv is None else argv:
        key, _, value = arg.partition("=")
        scheme = password_in(value if _ else arg)
        if scheme:
            print(f"{prog}: {_message(key.lstrip('+~') if _ else 'an argument', scheme)}",
                  file=sys.stderr, flush=True)
            sys.exit(2)
