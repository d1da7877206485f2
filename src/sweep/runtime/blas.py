"""Make MLX's Linux CPU backend use a fast BLAS, the fastest one for this CPU.

MLX's Linux wheel links a reference BLAS (~5 GFLOP/s here). Loading a fast one with
``RTLD_GLOBAL`` *before* ``mlx.core`` is first imported puts its ``cblas_sgemm`` in the
global symbol scope, which the dynamic linker searches before libmlx's own
dependencies: every matmul then runs ~40x faster. No re-exec or ``LD_PRELOAD`` needed.

Candidates, all from PyPI or the system:

- **OpenBLAS** from the ``scipy-openblas32`` wheel (the build NumPy and SciPy ship). Its
  symbols carry a ``scipy_`` prefix, so a C shim of a few lines, built once with the
  system's C compiler into the cache folder, exports ``cblas_sgemm`` (and d/c) and
  forwards to it. It also counts the calls, so a test can see MLX's matmuls arrive.
  A system ``libopenblas`` (Debian ``libopenblas0``) works as it is.
- **MKL** from the ``mkl`` wheel.

Which is faster depends on the CPU: on the development machine (AMD EPYC, AVX-512) MKL
takes a generic code path and OpenBLAS ran a LoRA step's matmuls 15-65% faster (e.g.
640x576 @ 576x49152, the LM head: 148 vs 245 GFLOP/s). So ``auto`` measures MLX matmuls
with each candidate once per CPU model, in a subprocess (~2 s each), keeps the fastest
and remembers the choice in ``<cache>/blas/<cpu id>.json``.

:func:`sweep.runtime.setup` calls :func:`use_fast_blas`, before ``mlx`` is imported;
importing this module loads nothing. ``SWEEP_BLAS`` selects: ``auto`` (default),
``openblas``, ``mkl``, ``reference`` (leave MLX alone) or a path to a shared library that
exports ``cblas_sgemm``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from sweep import paths

__all__ = ["BlasChoice", "use_fast_blas", "blas_choice", "provider_of", "shim_calls"]


@dataclass(frozen=True)
class BlasChoice:
    name: str  # "openblas", "mkl", "accelerate", "reference", or a path
    path: str | None
    fast: bool
    note: str

    def describe(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"BLAS for MLX's CPU backend: {self.name}{where}. {self.note}".strip()


_choice: BlasChoice | None = None
_shim_problem = ""  # why the OpenBLAS shim could not be built, if it could not

# The shim's C source (forwarders from MLX's CBLAS names to scipy-openblas32's prefixed
# ones), shipped beside this module.
_SHIM_C = Path(__file__).with_name("openblas_shim.c")

# What the measurement times: a LoRA step's typical matmul, the LM head of a 49k
# vocabulary, and a square one (tokens x hidden @ hidden x out).
_PROBE = r"""
import sys, time
import sweep.runtime; sweep.runtime.setup()
import mlx.core as mx
flops = seconds = 0.0
for m, k, n, reps in ((640, 576, 1536, 20), (640, 576, 49152, 2), (2048, 2048, 2048, 2)):
    a, b = mx.random.normal((m, k)), mx.random.normal((k, n))
    mx.eval(a, b, a @ b)
    start = time.perf_counter()
    for _ in range(reps):
        mx.eval(a @ b)
    seconds += time.perf_counter() - start
    flops += 2.0 * m * k * n * reps
print(flops / seconds / 1e9)
"""


def _mkl_candidates() -> list[str]:
    prefixes = {sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", "")}
    found: list[str] = []
    for prefix in filter(None, prefixes):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")))
    return found


def _system_openblas_candidates() -> list[str]:
    found = [ctypes.util.find_library("openblas") or ""]
    found += sorted(glob.glob("/usr/lib/*-linux-gnu/libopenblas.so*"))
    found += sorted(glob.glob("/usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so*"))
    return [f for f in found if f]


def _scipy_openblas_shim() -> Optional[str]:
    """Build (once) and return the shim over scipy-openblas32, or None if the wheel or a
    C compiler is missing."""
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib_dir = Path(list(spec.submodule_search_locations)[0]) / "lib"
    libs = sorted(lib_dir.glob("libscipy_openblas*.so*"))
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not libs or compiler is None:
        _note_shim_problem("no C compiler (cc/gcc) to build its shim" if libs
                           else f"no libscipy_openblas in {lib_dir}")
        return None
    link_name = libs[0].name[3:].split(".so")[0]
    source_text = _SHIM_C.read_text()
    key = hashlib.sha1(f"{source_text}{libs[0].resolve()}".encode()).hexdigest()[:12]
    folder = paths.cache_root() / "blas"
    shim = folder / f"libsweep-openblas-shim-{key}.so"
    if shim.exists():
        return str(shim)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".{shim.name}.{os.getpid()}"
        built = subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", str(_SHIM_C), "-o", str(staging),
             f"-L{lib_dir}", f"-l{link_name}", f"-Wl,-rpath,{lib_dir}"],
            capture_output=True, text=True, timeout=120)
        if built.returncode != 0:
            _note_shim_problem(f"building its shim failed: {built.stderr.strip()[-300:]}")
            return None
        staging.replace(shim)
    except (OSError, subprocess.SubprocessError) as error:
        _note_shim_problem(f"building its shim failed: {error}")
        return None
    return str(shim)


def _note_shim_problem(problem: str) -> None:
    global _shim_problem
    _shim_problem = f"OpenBLAS (scipy-openblas32) not used: {problem}."


def _candidates() -> Dict[str, str]:
    """The first usable library of each kind, OpenBLAS first."""
    found: Dict[str, str] = {}
    openblas = [_scipy_openblas_shim() or ""] + _system_openblas_candidates()
    for name, paths_ in (("openblas", openblas), ("mkl", _mkl_candidates())):
        for path in paths_:
            if path and os.path.exists(path):
                found[name] = path
                break
    return found


def _probe(path: str) -> Optional[float]:
    """GFLOP/s of MLX matmuls with ``path`` as the BLAS, in a fresh process."""
    env = {**os.environ, "SWEEP_BLAS": path, "SWEEP_NATIVE_KERNELS": "0"}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                             text=True, timeout=300)
        return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


MARGIN = 1.05


def pick(speeds: Dict[str, float]) -> str:
    """The first candidate (OpenBLAS) unless another measured more than 5% faster: a
    ~2 s probe on a busy machine is noisy (here it once read MKL 137 vs OpenBLAS 133
    GFLOP/s while another job ran, and MKL then answered SmolLM2's test questions at 132
    tokens/s against OpenBLAS's 175), and on an AMD EPYC OpenBLAS ran every LoRA-step
    shape faster. On an Intel Xeon (2026-12-04) the probe read MKL 318 against OpenBLAS
    293 GFLOP/s (+8.5%), and MKL trained the real workload 9% faster (2.02 against 2.20 s
    a micro-batch) and decoded 4% slower (168 against 175 tokens/s): a 10% margin had kept
    OpenBLAS there."""
    first = next(iter(speeds))
    fastest = max(speeds, key=speeds.get)
    return fastest if speeds[fastest] > MARGIN * speeds[first] else first


def _measured(candidates: Dict[str, str]) -> tuple[str, Dict[str, float]]:
    """The fastest candidate on this CPU, measured once and remembered."""
    record = paths.cache_root() / "blas" / f"{paths.cpu_id()}.json"
    try:
        saved = json.loads(record.read_text())
        if saved.get("candidates") == candidates and saved.get("choice") in candidates:
            return saved["choice"], saved.get("gflops", {})
    except (OSError, ValueError):
        pass
    speeds = {name: speed for name, path in candidates.items()
              if (speed := _probe(path)) is not None}
    if not speeds:  # could not measure: keep the order (OpenBLAS first)
        return next(iter(candidates)), {}
    choice = pick(speeds)
    try:
        paths.write_atomic(record, json.dumps({"candidates": candidates, "gflops": speeds,
                                               "choice": choice}, indent=2))
    except OSError:
        pass
    return choice, speeds


def _load(path: str) -> bool:
    try:
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


_ACCELERATE = BlasChoice("accelerate", None, True, "MLX uses Apple's Accelerate/Metal.")


def _bound_now() -> BlasChoice:
    """What MLX's ``cblas_sgemm`` is bound to, mlx.core being loaded (loads nothing)."""
    already = provider_of("cblas_sgemm")
    fast = already is not None and any(k in already for k in ("mkl", "openblas"))
    return BlasChoice(
        os.path.basename(already or "unknown"),
        already,
        fast,
        "" if fast else "mlx.core was imported before sweep.runtime.setup(), too late to "
        "load a fast BLAS: call setup() before importing mlx, or set LD_PRELOAD to "
        "libmkl_rt/libopenblas.",
    )


def _select(request: str) -> BlasChoice:
    if sys.platform == "darwin":
        return _ACCELERATE
    if request in ("reference", "off", "none"):
        return BlasChoice(
            "reference", None, False, "SWEEP_BLAS=reference: matmuls run ~40x slower."
        )
    if "mlx.core" in sys.modules:
        return _bound_now()
    if os.path.sep in request:
        if _load(request):
            return BlasChoice(os.path.basename(request), request, True, "Set by SWEEP_BLAS.")
        raise RuntimeError(f"SWEEP_BLAS={request}: cannot load that shared library")
    if request not in ("auto", "mkl", "openblas"):
        raise RuntimeError(
            f"SWEEP_BLAS={request!r} is not one of auto, openblas, mkl, reference "
            "or a path to a shared library"
        )
    candidates = _candidates()
    note = ""
    if request != "auto":
        candidates = {k: v for k, v in candidates.items() if k == request}
    elif len(candidates) > 1:
        best, speeds = _measured(candidates)
        candidates = {best: candidates[best], **candidates}
        if speeds:
            note = "Fastest here: " + ", ".join(
                f"{name} {speed:.0f} GFLOP/s" for name, speed in speeds.items()) + "."
    note = " ".join(filter(None, [note, _shim_problem]))
    for name, path in candidates.items():
        if _load(path):
            return BlasChoice(name, path, True, note)
    return BlasChoice(
        "reference",
        None,
        False,
        "WARNING: no OpenBLAS or MKL found, MLX uses its reference BLAS (~40x slower "
        f"matmuls on {platform.machine()}). pip install scipy-openblas32 (needs a C "
        "compiler) or mkl.",
    )


def use_fast_blas() -> BlasChoice:
    """Load the fastest BLAS available into the global scope (once per process)."""
    global _choice
    if _choice is None:
        _choice = _select(os.environ.get("SWEEP_BLAS", "auto").strip() or "auto")
    return _choice


def blas_choice() -> BlasChoice:
    """The BLAS MLX uses: the one :func:`use_fast_blas` chose, else what MLX is bound to
    now (``none`` before mlx is imported). Loads nothing."""
    if _choice is not None:
        return _choice
    if sys.platform == "darwin":
        return _ACCELERATE
    if "mlx.core" in sys.modules:
        return _bound_now()
    return BlasChoice("none", None, False, "sweep.runtime.setup() has not run.")


def shim_calls() -> Optional[int]:
    """How many ``cblas_sgemm`` calls went through the OpenBLAS shim (None without it)."""
    choice = blas_choice()
    if not choice.path or "sweep-openblas-shim" not in choice.path:
        return None
    counter = ctypes.CDLL(choice.path).sweep_sgemm_calls
    counter.restype = ctypes.c_ulong
    return int(counter())


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
