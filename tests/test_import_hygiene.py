"""Importing the package changes nothing; the commands call ``sweep.runtime.setup()``.

Each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

linux_x86 = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="the OpenBLAS and MKL wheels and the g++ kernels: Linux x86_64",
)

# Every module a config test, Hydra's plugin scan or a console script's import touches.
MODULES = ("sweep", "sweep.config", "sweep.runtime", "sweep.blas", "sweep.native_kernels",
           "sweep.allocator", "sweep.paths", "sweep.cli", "sweep.cli.sweep", "sweep.cli.eval",
           "sweep.cli.export", "sweep.cli.chat", "hydra_plugins.sweep_optuna",
           "hydra_plugins.sweep_optuna.optuna_sweeper", "hydra_plugins.sweep_optuna.config")

# The C environment (what MLX and env=None children see) as a dict, read through ctypes.
C_ENVIRON = r"""
import ctypes
_environ = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
def c_environ():
    pairs, i = {}, 0
    while _environ[i] is not None:
        key, _, value = _environ[i].decode(errors="replace").partition("=")
        pairs[key], i = value, i + 1
    return pairs
"""

IMPORTS = C_ENVIRON + r"""
import importlib, json, os, sys
events = []
WATCHED = ("ctypes.dlopen", "subprocess.Popen", "os.system", "os.posix_spawn", "os.exec",
           "os.fork", "os.forkpty", "os.spawn")
sys.addaudithook(lambda event, args: events.append([event, repr(args)[:300]])
                 if event in WATCHED else None)
before, c_before = dict(os.environ), c_environ()
for name in sys.argv[1:]:
    importlib.import_module(name)
maps = open("/proc/self/maps").read().splitlines()
print(json.dumps({
    "env_changed": sorted(k for k in {**before, **os.environ}
                          if before.get(k) != os.environ.get(k)),
    "c_env_changed": sorted(k for k in {**c_before, **c_environ()}
                            if c_before.get(k) != c_environ().get(k)),
    "events": events,
    "mlx_modules": sorted(m for m in sys.modules if m == "mlx" or m.startswith("mlx.")),
    "libraries": sorted({line.split()[-1] for line in maps if ".so" in line and any(
        word in line.lower() for word in ("blas", "mkl", "mlx", "sweep"))}),
    "heap_tuned": sys.modules["sweep.allocator"]._done,
}))
"""

def _python(code: str, *args: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/maps")
def test_importing_the_package_has_no_side_effects(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    got = _python(IMPORTS, *MODULES, SWEEP_CACHE=str(cache))
    assert got["env_changed"] == [] and got["c_env_changed"] == [], got
    assert got["events"] == [], got["events"]  # no dlopen, no child process (no compiler)
    assert got["mlx_modules"] == [] and got["libraries"] == [], got
    assert got["heap_tuned"] is False
    assert not cache.exists()  # nothing built or measured (shim, BLAS record, g++ wrapper)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="g++ kernels: Linux")
@pytest.mark.parametrize("module", ["sweep.cli", "sweep.cli.eval", "sweep.cli.export",
                                    "sweep.cli.chat"])
def test_every_command_sets_the_runtime_up(module: str) -> None:
    """The console scripts (and the sweeper's workers, which re-run the same command) set
    the runtime up before Hydra runs anything: ``--cfg job`` runs no task."""
    code = (f"import json, sys; sys.argv = ['x', '--cfg', 'job']; from {module} import main\n"
            "main()\n"
            "from sweep.blas import blas_choice; print(json.dumps(blas_choice().name))")
    assert _python(code) != "none"
