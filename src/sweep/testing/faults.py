"""Named fault points, for the reliability tests: ``SWEEP_FAULT=<point>[:<kind>][@<n>]``
makes the ``n``-th pass (default 1) through ``point(<point>)`` fail. Kinds:

- ``kill`` (default): SIGKILL this process, as the OOM killer or a lost machine does;
- ``term``: SIGTERM this process, as SLURM's preemption or ``scancel`` does;
- ``raise``: a RuntimeError (a bug in a trial);
- ``oom``: a MemoryError (out of memory);
- ``enospc``: OSError ENOSPC (a full disk);
- ``delay``: sleep 3 s (a slow process, to widen a race between processes).

``SWEEP_FAULT_TRIAL=<number>`` limits it to one trial of a sweep. Unset (always, outside
tests) a point costs one dictionary lookup. The points: ``model_import``, ``train_step``,
``evaluation``, ``save_adapter``, ``checkpoint_write``, ``mlflow_log``, ``trial_end``, ``report``,
``between_trials``, ``parent_run`` (before a sweep makes its MLflow parent run).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Dict

__all__ = ["point", "ENV", "TRIAL_ENV", "CURRENT_TRIAL_ENV"]

ENV, TRIAL_ENV = "SWEEP_FAULT", "SWEEP_FAULT_TRIAL"
CURRENT_TRIAL_ENV = "SWEEP_CURRENT_TRIAL"  # set by a sweep's job while it runs
DELAY = 3.0  # seconds of the ``delay`` kind
_passes: Dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    where, _, kind = target.partition(":")
    if where != name:
        return
    only = os.environ.get(TRIAL_ENV)
    if only is not None and os.environ.get(CURRENT_TRIAL_ENV) != only:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != int(nth or 1):
        return
    kind = kind or "kill"
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault at {name}")
    if kind == "oom":
        raise MemoryError(f"injected out-of-memory at {name}")
    if kind == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {name})")
    if kind == "delay":
        time.sleep(DELAY)
        return
    raise ValueError(f"{ENV}={spec}: unknown kind '{kind}' (kill, term, raise, oom, enospc, delay)")
