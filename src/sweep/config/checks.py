"""The one error type and check that every config schema uses (no heavy imports)."""

from __future__ import annotations

from typing import Any

from sweep.errors import InputError

__all__ = ["ConfigError", "require"]


class ConfigError(InputError):
    """A config value is out of range or inconsistent; the message names the key."""


def require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {message}")
