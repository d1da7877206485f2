"""MLX's CPU matmuls really go to the fast BLAS (checked by who answers, not by timing)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from sweep.blas import blas_choice, provider_of

linux_x86 = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="MKL from PyPI is the fast BLAS on Linux x86_64 only",
)


@linux_x86
def test_fast_blas_is_chosen_and_resolves_cblas_sgemm() -> None:
    choice = blas_choice()
    assert choice.fast and choice.name == "mkl", choice.describe()
    import mlx.core  # noqa: F401

    assert "libmkl_rt" in (provider_of("cblas_sgemm") or "")


@linux_x86
def test_mlx_matmul_calls_mkl() -> None:
    """MKL_VERBOSE makes MKL print every call: an MLX matmul must show up as SGEMM."""
    code = ("import sweep, mlx.core as mx; a = mx.ones((256, 256)); "
            "mx.eval(a @ a); print('done')")
    env = {**os.environ, "MKL_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SGEMM(N,N,256,256,256" in out.stdout, out.stdout[-2000:]


@linux_x86
def test_reference_blas_when_asked_and_mlx_imported_first_is_reported() -> None:
    code = ("import mlx.core as mx; import sweep; from sweep.blas import blas_choice; "
            "print(blas_choice().fast, blas_choice().describe())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "MKL_VERBOSE": "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("False") and "import sweep first" in out.stdout
