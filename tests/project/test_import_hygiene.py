"""Importing the package changes nothing; ``sweep.runtime.setup()`` turns MLX's CPU fast
path on (fast BLAS, kernels built for this CPU, heap settings), and the processes started
afterwards still get the environment the process had.

Each check runs in a fresh interpreter. Its environment is ``os.environ`` of this pytest
process, passed explicitly: conftest has run ``setup()`` here, and a child started with
``env=None`` inherits the C-level PATH/TMPDIR that MLX reads (see ``sweep.runtime``).
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
MODULES = ("sweep", "sweep.config", "sweep.runtime", "sweep.runtime.blas", "sweep.runtime.kernels",
           "sweep.runtime.allocator", "sweep.paths", "sweep.cli", "sweep.cli.sweep", "sweep.cli.eval",
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
    "heap_tuned": sys.modules["sweep.runtime.allocator"]._done,
}))
"""

SETUP = C_ENVIRON + r"""
import json, os, subprocess, sys, time, warnings
before, c_before = dict(os.environ), c_environ()
import sweep.runtime
with warnings.catch_warnings():
    warnings.simplefilter("error")  # mlx is not imported yet: nothing to warn about
    state = sweep.runtime.setup()
start = time.perf_counter()
again = sweep.runtime.setup()
second_call = time.perf_counter() - start
import mlx.core as mx
from sweep.runtime.blas import provider_of
f = mx.compile(lambda x: mx.exp(x * 1.2345) - 0.5)
mx.eval(f(mx.ones((64,))))
SHOW = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('PATH', 'TMPDIR')}))"
def child(**kwargs):
    out = subprocess.run([sys.executable, "-c", SHOW], capture_output=True, text=True,
                         check=True, **kwargs)
    return json.loads(out.stdout)
print(json.dumps({
    "same_object": again is state, "second_call": second_call,
    "heap_tuned": state.heap_tuned, "blas": [state.blas.name, state.blas.path, state.blas.fast],
    "provider": provider_of("cblas_sgemm"),
    "kernels_dir": str(state.kernels_dir) if state.kernels_dir else None,
    "original": {k: before.get(k) for k in ("PATH", "TMPDIR")},
    "os_environ_changed": sorted(k for k in {**before, **os.environ}
                                 if before.get(k) != os.environ.get(k)),
    "c_env": {k: c_environ().get(k) for k in ("PATH", "TMPDIR")},
    "c_env_before": {k: c_before.get(k) for k in ("PATH", "TMPDIR")},
    # as the sweeper starts its workers ({**os.environ, ...}) and MLflow and GitPython
    # their commands (os.environ.copy())
    "worker_child": child(env={**os.environ, "SWEEP_OPTUNA_WORKER": "1"}),
    "copied_child": child(env=os.environ.copy()),
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


@linux_x86
def test_setup_turns_the_fast_path_on_and_children_keep_the_environment() -> None:
    got = _python(SETUP)
    # once per process: the second call returns what the first did, at once
    assert got["same_object"] and got["second_call"] < 0.01, got
    assert got["heap_tuned"] is True
    name, path, fast = got["blas"]
    assert fast and name in ("openblas", "mkl"), got["blas"]
    assert got["provider"] == os.path.realpath(path)  # MLX's matmuls go to it
    assert got["kernels_dir"], got
    base = Path(got["kernels_dir"])
    wrapper = base / "sweep-native-gxx"
    assert "-march=native" in (wrapper / "g++").read_text()
    # MLX reads these through C: its kernels are built by the wrapper, cached per CPU
    assert got["c_env"]["TMPDIR"] == str(base / "tmp")
    assert got["c_env"]["PATH"] == f"{wrapper}{os.pathsep}{got['c_env_before']['PATH']}"
    assert any(f.endswith(".so") and "Exp" in f
               for _, _, files in os.walk(base / "tmp" / "mlx") for f in files)
    # ... while Python code and the processes it starts see what the process had
    assert got["os_environ_changed"] == [], got
    assert got["worker_child"] == got["original"], got
    assert got["copied_child"] == got["original"], got


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="g++ kernels: Linux")
@pytest.mark.parametrize("module", ["sweep.cli", "sweep.cli.eval", "sweep.cli.export",
                                    "sweep.cli.chat"])
def test_every_command_sets_the_runtime_up(module: str) -> None:
    """The console scripts (and the sweeper's workers, which re-run the same command) set
    the runtime up before Hydra runs anything: ``--cfg job`` runs no task."""
    code = (f"import json, sys; sys.argv = ['x', '--cfg', 'job']; from {module} import main\n"
            "main()\n"
            "from sweep.runtime.blas import blas_choice; from sweep.runtime.kernels import "
            "native_kernels_dir\n"
            "print(json.dumps([blas_choice().name, str(native_kernels_dir())]))")
    name, kernels = _python(code)
    assert name != "none" and kernels != "None", (name, kernels)
