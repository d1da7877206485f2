"""MLX's CPU matmuls really go to the fast BLAS (checked by who answers, not by timing),
and ``auto`` picks the faster of OpenBLAS and MKL by measuring them once per CPU. The BLAS
is loaded by ``sweep.runtime.setup()`` (conftest calls it here; the snippets below, run in
fresh processes, call it first as the commands do)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.runtime.blas import blas_choice, pick, provider_of

linux_x86 = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="the OpenBLAS and MKL wheels are the fast BLAS on Linux x86_64",
)


SETUP = "import sweep.runtime; sweep.runtime.setup(); "


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def _python(code: str, **env: str) -> str:
    return _run(code, **env).stdout


@linux_x86
def test_fast_blas_is_chosen_and_resolves_cblas_sgemm() -> None:
    choice = blas_choice()
    assert choice.fast and choice.name in ("openblas", "mkl"), choice.describe()
    import mlx.core  # noqa: F401

    assert provider_of("cblas_sgemm") == os.path.realpath(choice.path)


@linux_x86
def test_mlx_matmul_calls_openblas_through_the_shim() -> None:
    code = (SETUP + "import mlx.core as mx; from sweep.runtime.blas import shim_calls, blas_choice; "
            "before = shim_calls(); a = mx.ones((256, 256)); mx.eval(a @ a); "
            "print(blas_choice().name, before, shim_calls())")
    name, before, after = _python(code, SWEEP_BLAS="openblas").split()
    assert name == "openblas" and int(after) == int(before) + 1


@linux_x86
def test_mlx_matmul_calls_mkl() -> None:
    """MKL_VERBOSE makes MKL print every call: an MLX matmul must show up as SGEMM."""
    code = (SETUP + "import mlx.core as mx; a = mx.ones((256, 256)); "
            "mx.eval(a @ a); print('done')")
    out = _python(code, SWEEP_BLAS="mkl", MKL_VERBOSE="1")
    assert "SGEMM(N,N,256,256,256" in out, out[-2000:]


def test_pick_keeps_openblas_unless_another_is_clearly_faster() -> None:
    assert pick({"openblas": 133.0, "mkl": 137.0}) == "openblas"  # within the noise
    assert pick({"openblas": 100.0, "mkl": 111.0}) == "mkl"
    assert pick({"openblas": 293.0, "mkl": 318.0}) == "mkl"  # an Intel Xeon: 9% faster steps
    assert pick({"openblas": 236.0, "mkl": 191.0}) == "openblas"
    assert pick({"mkl": 50.0}) == "mkl"


@linux_x86
def test_auto_measures_both_once_and_keeps_the_faster(tmp_path: Path) -> None:
    code = SETUP + "from sweep.runtime.blas import blas_choice; print(blas_choice().name)"
    first = _python(code, SWEEP_CACHE=str(tmp_path), SWEEP_BLAS="auto").strip()
    [record] = (tmp_path / "blas").glob("*.json")
    saved = json.loads(record.read_text())
    assert set(saved["gflops"]) == {"openblas", "mkl"}
    assert all(speed > 20 for speed in saved["gflops"].values()), saved  # not the reference
    assert first == saved["choice"] == pick(saved["gflops"])
    record.write_text(json.dumps({**saved, "choice": "mkl" if first == "openblas" else
                                  "openblas"}))  # the remembered choice is what counts
    second = _python(code, SWEEP_CACHE=str(tmp_path), SWEEP_BLAS="auto").strip()
    assert second != first


@linux_x86
def test_reference_blas_when_mlx_imported_before_setup_is_reported_and_warned() -> None:
    code = ("import mlx.core as mx; " + SETUP + "from sweep.runtime.blas import blas_choice; "
            "print(blas_choice().fast, blas_choice().describe())")
    out = _run(code, MKL_VERBOSE="0")
    assert out.stdout.startswith("False") and "call setup() before importing mlx" in out.stdout
    assert "RuntimeWarning" in out.stderr and "too late" in out.stderr, out.stderr


@linux_x86
def test_asking_which_blas_loads_none() -> None:
    """``blas_choice()`` only reports: before ``setup()`` no BLAS is loaded, none chosen."""
    code = ("from sweep.runtime.blas import blas_choice; print(blas_choice().name, "
            "any('blas' in line or 'mkl' in line for line in open('/proc/self/maps')))")
    assert _python(code).split() == ["none", "False"]
