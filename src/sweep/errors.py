"""The project's errors. Each message is the whole story (it names the key, file or line),
so the commands print it as one line and exit with the error's ``exit_code``:

- :class:`InputError` (exit 2): bad input (config, data, model path, target, storage URL);
- :class:`TrialFailed` (exit 3): the trial ran but its result means nothing (no answer
  tokens, a non-finite loss, a collapsed model).

Inside a sweep either ends the trial FAIL and the sweep goes on. Neither is a
``ValueError``, so a generic handler of library errors does not swallow them.
"""

from __future__ import annotations

__all__ = ["SweepError", "InputError", "TrialFailed", "first_line"]


class SweepError(Exception):
    """Base of the errors the commands explain in one line (see the module docstring)."""

    exit_code = 1


class InputError(SweepError):
    """Bad input (config, data, model path, target). The message names the key, file or line."""

    exit_code = 2


class TrialFailed(SweepError):
    """The trial cannot give a meaningful result (no answer tokens to train on, a
    non-finite loss, a collapsed model); the message says why."""

    exit_code = 3


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a database driver's own error if it wraps
    one, as SQLAlchemy's ``orig``): for one-line reports of long library errors."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else ""
