"""Keep freed buffers in the process heap (glibc), so MLX's CPU arrays do not page-fault.

MLX's CPU allocator has no buffer cache: every array is a ``malloc`` and a ``free``.
glibc serves a large block (above a threshold that grows to at most 32 MB) with its own
``mmap`` and gives it back with ``munmap`` on ``free``, so the next array of that size
page-faults on every 4 KiB page and the kernel zeroes each one: ``clear_page_erms`` and
the page-fault path were ~8% of a LoRA step's wall time on the development machine, and
an elementwise op on a 64 MB array took 34 ms instead of 5 ms. Raising the mmap and trim
thresholds keeps such blocks in the heap for reuse. Peak memory is what the step needs at
its peak, as before; the heap just does not shrink between steps.

``SWEEP_MALLOC_TUNING=0`` leaves glibc's defaults. Not glibc (macOS, musl): nothing done.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30  # blocks up to 1 GiB come from the heap
_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (once); True if it did."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("SWEEP_MALLOC_TUNING") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _LIMIT))
    return _done
