"""Make MLX's Linux CPU backend use a fast BLAS.

MLX's Linux wheel links a reference BLAS (~5 GFLOP/s here). Loading MKL (or OpenBLAS)
with ``RTLD_GLOBAL`` *before* ``mlx.core`` is first imported puts its ``cblas_sgemm`` in
the global symbol scope, which the dynamic linker searches before libmlx's own
dependencies: every matmul then runs ~40x faster. No re-exec or ``LD_PRELOAD`` needed.

``sweep/__init__.py`` calls :func:`use_fast_blas` so that importing ``sweep`` first is
enough. ``SWEEP_BLAS`` selects: ``auto`` (default: MKL, then OpenBLAS), ``mkl``,
``openblas``, ``reference`` (leave MLX alone) or a path to a shared library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import platform
import sys
from dataclasses import dataclass

__all__ = ["BlasChoice", "use_fast_blas", "blas_choice", "provider_of"]


@dataclass(frozen=True)
class BlasChoice:
    name: str  # "mkl", "openblas", "accelerate", "reference", or a path
    path: str | None
    fast: bool
    note: str

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"BLAS for MLX's CPU backend: {self.name}{where}. {self.note}".strip()


_choice: BlasChoice | None = None


def _mkl_candidates() -> list[str]:
    prefixes = {sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", "")}
    found: list[str] = []
    for prefix in filter(None, prefixes):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    return found


def _openblas_candidates() -> list[str]:
    found = [ctypes.util.find_library("openblas") or ""]
    found += sorted(glob.glob("/usr/lib/*-linux-gnu/libopenblas.so*"))
    found += sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so*"))
    return [f for f in found if f]


def _load(path: str) -> bool:
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def _select(request: str) -> BlasChoice:
    if sys.platform == "darwin":
        return BlasChoice("accelerate", None, True, "MLX uses Apple's Accelerate/Metal.")
    if request in ("reference", "off", "none"):
        return BlasChoice(
            "reference", None, False, "SWEEP_BLAS=reference: matmuls run ~40x slower."
        )
    if "mlx.core" in sys.modules:
        already = provider_of("cblas_sgemm")
        fast = already is not None and ("mkl" in already or "openblas" in already)
        return BlasChoice(
            os.path.basename(already or "unknown"),
            already,
            fast,
            "" if fast else "mlx was imported before sweep, too late to load a fast "
            "BLAS: import sweep first, or set LD_PRELOAD to libmkl_rt/libopenblas.",
        )
    if os.path.sep in request:
        if _load(request):
            return BlasChoice(os.path.basename(request), request, True, "Set by SWEEP_BLAS.")
        raise RuntimeError(f"SWEEP_BLAS={request}: cannot load that shared library")
    order = {"auto": ("mkl", "openblas"), "mkl": ("mkl",), "openblas": ("openblas",)}
    if request not in order:
        raise RuntimeError(
            f"SWEEP_BLAS={request!r} is not one of auto, mkl, openblas, reference "
            "or a path to a shared library"
        )
    finders = {"mkl": _mkl_candidates, "openblas": _openblas_candidates}
    for name in order[request]:
        for path in finders[name]():
            if _load(path):
                return BlasChoice(name, path, True, "")
    return BlasChoice(
        "reference",
        None,
        False,
        "WARNING: no MKL or OpenBLAS found, MLX uses its reference BLAS (~40x slower "
        f"matmuls on {platform.machine()}). Install 'mkl' (pip) or libopenblas0 (apt).",
    )


def use_fast_blas() -> BlasChoice:
    """Load the fastest BLAS available into the global scope (once per process)."""
    global _choice
    if _choice is None:
        _choice = _select(os.environ.get("SWEEP_BLAS", "auto").strip() or "auto")
    return _choice


def blas_choice() -> BlasChoice:
    return use_fast_blas()


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def provider_of(symbol: str) -> str | None:
    """The shared library that the global scope resolves ``symbol`` to (Linux/glibc).

    libmlx.so leaves ``cblas_sgemm`` undefined; the dynamic linker binds it to the
    first definition in the global scope, which is what this reports.
    """
    if not sys.platform.startswith("linux"):
        return None
    libdl = ctypes.CDLL(None)
    libdl.dlsym.restype = ctypes.c_void_p
    libdl.dlsym.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    address = libdl.dlsym(None, symbol.encode())  # RTLD_DEFAULT
    if not address:
        return None
    info = _DlInfo()
    libdl.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not libdl.dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
        return None
    return os.path.realpath(info.dli_fname.decode()) if info.dli_fname else None
