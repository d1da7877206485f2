"""MLX's CPU fast path, set up by one explicit call: :func:`setup`.

Importing ``sweep`` or any of its modules (the Hydra sweeper plugin and the config tests
do) changes nothing in the process. The entry points call ``setup()`` first: the console
scripts' ``main`` (``sweep``, ``python -m sweep``, ``sweep-eval``, ``sweep-export``,
``sweep-chat``; a sweep's extra worker processes re-run the same command, so every trial
gets it), the MLflow model's ``load_context``, the benchmarks and the tests' conftest.
Once per process; a second call returns the first one's :class:`Runtime` at once.

It does three things, on Linux (elsewhere MLX needs none of them):

1. **Heap** (:mod:`sweep.runtime.allocator`): glibc keeps freed blocks up to 32 MB for reuse, so
   MLX's arrays do not page-fault on every allocation.
2. **BLAS** (:mod:`sweep.runtime.blas`): the fastest of OpenBLAS and MKL is loaded with
   ``RTLD_GLOBAL`` (measured once per CPU model, in subprocesses, the OpenBLAS shim built
   once with ``cc``). This one must come *before* ``mlx.core`` is first imported:
   libmlx's ``cblas_sgemm`` is bound when it is loaded. If mlx was imported first,
   ``setup()`` cannot change it and warns (``RuntimeWarning``) with what to do; the
   trial's log and its MLflow ``blas`` parameter say which BLAS it got.
3. **Fused kernels for this CPU** (:mod:`sweep.runtime.kernels`): MLX builds them with
   ``g++`` found on ``PATH`` (a wrapper adds ``-march=native``) into
   ``$TMPDIR/mlx/<version>/cpu`` (its own folder per CPU model and flags).

The environment: MLX reads ``PATH`` and ``TMPDIR`` through C whenever it builds a new
kernel, at any time in the process's life (libstdc++'s ``temp_directory_path()``,
``popen``'s ``/bin/sh``), so they cannot be put back after ``setup()``. They are set with
``os.putenv`` alone, in the C environment that MLX reads; ``os.environ`` is left as it
was. Python code (``tempfile``, ``shutil.which``) reads ``os.environ``, and so does every
process started with an environment built from it: the sweeper's workers
(``{**os.environ, ...}``), MLflow's and GitPython's commands (``os.environ.copy()``), the
benchmarks' baselines. They all see the PATH and TMPDIR the process had. Two limits: a
child started with ``env=None`` through fork and exec (``subprocess``'s default) or
``os.system`` gets the C environment (those sweep starts pass ``env=``, or run inside
``setup()`` before the change); and assigning ``os.environ["PATH"]`` or ``["TMPDIR"]``
afterwards replaces MLX's value as well.

``SWEEP_MALLOC_TUNING=0``, ``SWEEP_BLAS=...`` and ``SWEEP_NATIVE_KERNELS=0`` turn each
part off (see the modules).
"""

from __future__ import annotations

import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from sweep.runtime.allocator import keep_freed_memory
from sweep.runtime.blas import BlasChoice, use_fast_blas
from sweep.runtime.kernels import use_native_kernels

__all__ = ["Runtime", "setup"]


@dataclass(frozen=True)
class Runtime:
    """What :func:`setup` put in place."""

    heap_tuned: bool
    blas: BlasChoice
    kernels_dir: Optional[Path]  # the g++ wrapper and kernel cache, None if not used


_runtime: Optional[Runtime] = None
_lock = threading.Lock()


def setup() -> Runtime:
    """Set MLX's CPU backend up for speed (heap, BLAS, fused kernels), once per process.

    Call it before ``mlx`` is first imported; warns if it was, since the BLAS can then no
    longer be changed. Returns the same :class:`Runtime` on every call."""
    global _runtime
    if _runtime is not None:
        return _runtime
    with _lock:
        if _runtime is None:
            mlx_first = "mlx.core" in sys.modules
            heap = keep_freed_memory()
            choice = use_fast_blas()
            _runtime = Runtime(heap, choice, use_native_kernels())
            if mlx_first and not choice.fast and choice.name != "reference":
                warnings.warn(choice.describe(), RuntimeWarning, stacklevel=2)
    return _runtime
