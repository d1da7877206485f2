"""Packaging: a wheel (what ``pip install .`` from a clone installs) carries the config tree,
the shipped data and the sweeper plugin, and runs without the checkout; a checkout reads
the root ``conf/``; ``SWEEP_CONFIG_DIR`` overrides both."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import sweep.config as config
from sweep.config import (CONFIG_ENV, ConfigError, check_config_dir, compose,
                          find_config_dir)

ROOT = Path(__file__).resolve().parents[2]
CONF_FILES = sorted(p.relative_to(ROOT / "conf").as_posix()
                    for p in (ROOT / "conf").rglob("*.yaml"))

# Run in the unzipped wheel with the checkout's src/ (the editable install's .pth) removed.
IN_WHEEL = r"""
import sys
from pathlib import Path
site, src = sys.argv[1], sys.argv[2]
sys.path[:] = [site] + [p for p in sys.path
                        if p and "__editable__" not in p and Path(p).resolve() != Path(src)]
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in repr(f)]

import hydra_plugins.sweep_optuna.optuna_sweeper as facade
import sweep
from sweep.config import CONFIG_DIR, compose
from sweep.data.records import builtin_path
for module in (sweep, facade):
    assert module.__file__.startswith(site), module.__file__
assert CONFIG_DIR == Path(site, "sweep", "conf"), CONFIG_DIR

cfg = compose()
assert cfg.model.name == "smollm2_135m", cfg.model.name
assert compose(["model=tiny"]).model.name == "tiny"
assert builtin_path("legal_qa").is_file() and str(builtin_path("legal_qa")).startswith(site)

from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="t"):
    full = hydra_compose("config", return_hydra_config=True)
assert "lora.rank" in full.hydra.sweeper.params, full.hydra.sweeper
assert "SweepOptunaSweeper" in [p.__name__ for p in Plugins.instance().discover(Sweeper)]

sys.argv = ["sweep", "--cfg", "job"]
from sweep.cli import main
main()
"""


def run(args: list, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", CONFIG_ENV)}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def clone(dest: Path) -> Path:
    """The files a clone of the repository would have (tracked and new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (importlib.util.find_spec("setuptools.command.bdist_wheel")
            or importlib.util.find_spec("wheel")):
        pytest.fail("building a wheel without isolation needs setuptools>=70.1 (or wheel) in "
                    "this environment: the dev extra has it, `make setup` installs it")
    tmp = tmp_path_factory.mktemp("wheel")
    source = clone(tmp / "source")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--no-index", "-w", str(tmp / "dist"), str(source)], cwd=tmp)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (tmp / "dist").glob("lora_sweep-*.whl")
    return path


def test_wheel_carries_conf_data_and_plugin(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = sorted(n[len("sweep/conf/"):] for n in names if n.startswith("sweep/conf/"))
    assert packaged == CONF_FILES
    assert "sweep/data/legal_qa/indian_law_qa.jsonl" in names
    assert "sweep/runtime/openblas_shim.c" in names  # the BLAS shim is built from it
    assert "sweep/shipping/pyfunc_model.py" in names
    assert {"hydra_plugins/sweep_optuna/config.py",
            "hydra_plugins/sweep_optuna/optuna_sweeper.py"} <= names
    assert not any("__pycache__" in n for n in names)


def test_wheel_runs_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    result = run([sys.executable, "-c", IN_WHEEL, str(site), str(ROOT / "src")], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "name: smollm2_135m" in result.stdout and "rank: 16" in result.stdout


def test_sdist_carries_conf(tmp_path: Path) -> None:
    # A build from the sdist (python -m build) copies conf/ from there.
    source = clone(tmp_path / "source")
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    built = run([sys.executable, "-c", code, str(tmp_path)], cwd=source)
    assert built.returncode == 0, built.stdout + built.stderr
    with tarfile.open(tmp_path / built.stdout.split()[-1]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    assert {"setup.py", "MANIFEST.in"} <= names
    assert {f"conf/{n}" for n in CONF_FILES} <= names


def test_checkout_reads_the_root_conf() -> None:
    assert find_config_dir({}) == ROOT / "conf"
    if CONFIG_ENV not in os.environ:
        assert config.CONFIG_DIR == ROOT / "conf"


def test_resolution_order(tmp_path: Path) -> None:
    checkout, packaged, override = tmp_path / "checkout", tmp_path / "packaged", tmp_path / "mine"
    assert find_config_dir({CONFIG_ENV: str(override)}, checkout, packaged) == override
    assert find_config_dir({}, checkout, packaged) == packaged
    checkout.mkdir()
    (checkout / "config.yaml").write_text("a: 1\n")  # someone else's conf/: no model/
    assert find_config_dir({}, checkout, packaged) == packaged
    (checkout / "model").mkdir()
    assert find_config_dir({}, checkout, packaged) == checkout


def test_no_config_tree_names_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout, packaged = tmp_path / "root" / "conf", tmp_path / "site" / "sweep" / "conf"
    monkeypatch.setattr(config, "CHECKOUT_CONF", checkout)
    monkeypatch.setattr(config, "PACKAGED_CONF", packaged)
    monkeypatch.setattr(config, "CONFIG_DIR", packaged)
    with pytest.raises(ConfigError) as error:
        compose()
    assert str(checkout) in str(error.value) and str(packaged) in str(error.value)
    assert CONFIG_ENV in str(error.value)
    with pytest.raises(ConfigError, match=f"{CONFIG_ENV}: no config.yaml in {tmp_path}"):
        check_config_dir(tmp_path)


def test_env_var_overrides_at_import(tmp_path: Path) -> None:
    mine = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", mine)
    (mine / "model" / "tiny.yaml").write_text(
        (mine / "model" / "tiny.yaml").read_text().replace("name: tiny", "name: mine"))
    code = ("from sweep.config import CONFIG_DIR, compose; print(CONFIG_DIR); "
            "print(compose(['model=tiny']).model.name)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120, env={**os.environ, CONFIG_ENV: str(mine)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(mine), "mine"]
