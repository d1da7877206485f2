"""The sweep's own stop: one line and an exit code, no traceback (``optuna_sweeper``)."""

from __future__ import annotations

__all__ = ["SweepAborted"]


class SweepAborted(RuntimeError):
    """The sweep stopped on purpose (too many failures, a bad search space); the command
    exits with ``exit_code`` (:mod:`sweep.errors`: 2 bad input, 3 failed trials)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
