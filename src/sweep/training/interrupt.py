"""SIGTERM and Ctrl-C while training: finish the micro-batch, write a checkpoint, then stop.

SLURM preempts with SIGTERM (``--signal`` can send it ahead of time), a laptop's user
presses Ctrl-C. Inside :class:`DeferredStop` the first such signal is only noted; the
loop sees it after the current micro-batch, saves its whole state and calls
:meth:`DeferredStop.deliver`, which acts as the signal would have (the handler that was
installed before: ``sweep`` raises ``Terminated`` / ``KeyboardInterrupt``; with the
default one, the process ends by the signal). A second signal is delivered at once.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Dict, Optional

__all__ = ["DeferredStop"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DeferredStop:
    def __init__(self) -> None:
        self.requested: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "DeferredStop":
        if threading.current_thread() is threading.main_thread():  # handlers live there
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # the second one: at once
            self.requested = signum
            self.deliver(frame)
        self.requested = signum

    def deliver(self, frame: Any = None) -> None:
        """Act as the signal would have without this deferral."""
        signum = self.requested
        handler = self._previous.get(signum)
        self._restore()
        if signum is None:
            return
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_IGN:
            return
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt
        else:  # SIG_DFL: end by the signal, as an undeferred one would have
            os.kill(os.getpid(), signum)
        raise KeyboardInterrupt  # a handler that returned: stop anyway
