"""Cluster launch recipes (docs/many-machines.md, "Cluster launch"), composed for real:
Hydra's joblib launcher under our sweeper (composition and one tiny sweep), the SLURM array script
``examples/slurm/sweep_array.sbatch`` (run by bash with a stand-in for ``sweep``, its
command composed) and the documented submitit override line."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import optuna
import pytest
from hydra import compose as hydra_compose, initialize_config_dir
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import ROOT, tiny_overrides
from sweep.config import CONFIG_DIR, register
from sweep.secrets import password_in

SBATCH = ROOT / "examples" / "slurm" / "sweep_array.sbatch"
DOC = (ROOT / "docs" / "many-machines.md").read_text()  # the page with the launch recipes


def hydra_cfg(overrides: List[str]):
    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="sweep"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


def doc_command(prefix: str) -> List[str]:
    """The overrides of the page's one command line starting with ``prefix``."""
    lines = [line for line in DOC.splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1, f"docs/many-machines.md: {len(lines)} lines start with {prefix!r}"
    words = shlex.split(lines[0].split(" #")[0])
    return [w for w in words[words.index("-m") + 1:] if "=" in w]


def test_launchers_are_discovered() -> None:
    names = [p.__name__ for p in Plugins.instance().discover(Launcher)]
    assert {"BasicLauncher", "JoblibLauncher", "SlurmLauncher"} <= set(names), names


# -- joblib ------------------------------------------------------------------------------
def test_joblib_composes_as_the_docs_say() -> None:
    overrides = doc_command(".venv/bin/sweep -m hydra/launcher=joblib")
    assert overrides[:2] == ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    cfg = hydra_cfg(overrides)
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "joblib"
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "sweep_optuna"  # still ours
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 2 and cfg.hydra.launcher.backend is None
    # the defaults the docs state: one worker per core, loky chosen by the launcher
    default = hydra_cfg(["hydra/launcher=joblib"]).hydra.launcher
    assert default.n_jobs == -1 and default.prefer == "processes"


@pytest.mark.slow
def test_a_joblib_sweep_isolates_each_trial(tmp_path: Path, qa_file: Path,
                                            mlflow_store: str) -> None:
    """2 trials in loky workers, plus one whose worker is SIGKILLed mid-step (as a
    segfault or the OOM killer would): that one FAIL, the sweep goes on and exits 0."""
    uri, storage = f"sqlite:///{tmp_path}/mlflow/m.db", f"sqlite:///{tmp_path}/o.db"
    cmd = [sys.executable, "-m", "sweep", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           *tiny_overrides(tmp_path, qa_file, "train.iters=4"), "hydra.sweeper.n_trials=2",
           "hydra.sweeper.pruner=none", f"hydra.sweeper.storage={storage}",
           "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path}/sweep",
           "eval.after_sweep=false", "registry.after_sweep=false"]
    env = {**os.environ, "SWEEP_FAULT": "train_step:kill", "SWEEP_FAULT_TRIAL": "1"}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert "unexpectedly terminated" in trials[1].user_attrs["fail_reason"]
    for t in (trials[0], trials[2]):
        assert t.user_attrs["pid"] != t.user_attrs["sweeper_pid"]  # a worker ran the job
        assert t.intermediate_values  # it reported to its trial through the storage
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep.kind") == "study"]
    children = [r for r in runs if "sweep.trial" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED", "FINISHED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the worker set the runtime up itself (before: MLX's reference BLAS, "none")
    assert all(r.data.params["blas"] != "none" for r in children
               if r.info.status == "FINISHED")


# -- SLURM array -------------------------------------------------------------------------
def _sbatch_directives() -> Dict[str, str]:
    found = re.findall(r"^#SBATCH\s+--([\w-]+)(?:=(\S+))?", SBATCH.read_text(), re.M)
    return {name: value for name, value in found}


def _run_sbatch(tmp_path: Path, task: int, *args: str, **env: str) -> Tuple[subprocess.CompletedProcess, List[str], Dict[str, str]]:
    """The script as SLURM would run it, with ``sweep`` replaced by a stand-in that writes
    down its arguments and environment: (process, argv, env)."""
    stub, record = tmp_path / "sweep-stub", tmp_path / f"argv-{task}"
    stub.write_text("#!/bin/sh\nprintf '%s\\0' \"$@\" > \"$RECORD\"\nenv -0 > \"$RECORD.env\"\n")
    stub.chmod(0o755)
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "8",
            "SLURM_SUBMIT_DIR": str(ROOT), "SWEEP_BIN": str(stub), "RECORD": str(record)}
    out = subprocess.run(["bash", str(SBATCH), *args], env={**base, **env}, capture_output=True,
                         text=True, timeout=30)
    if out.returncode != 0:
        return out, [], {}
    argv = record.read_text().split("\0")[:-1]
    seen = dict(kv.split("=", 1) for kv in Path(f"{record}.env").read_text().split("\0") if "=" in kv)
    return out, argv, seen


def _credentials(tmp_path: Path) -> None:
    folder = tmp_path / "home" / ".sweep"
    folder.mkdir(parents=True)
    (folder / "pgpass").write_text("db.example.org:5432:optuna:sweep:pg-secret-1\n")
    (folder / "mlflow").write_text("alice:ml:secret-2")  # ':' in it, no final newline
    for f in folder.iterdir():
        f.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_the_sbatch_script_parses_and_asks_for_an_array() -> None:
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    directives = _sbatch_directives()
    assert directives["array"] == "0-7"
    assert directives["signal"] == "B:TERM@120"  # to `sweep` itself: it is exec'd
    assert "--requeue" in SBATCH.read_text()


def test_the_sbatch_command_composes(tmp_path: Path) -> None:
    _credentials(tmp_path)
    runs = {task: _run_sbatch(tmp_path, task, "model=tiny") for task in (0, 5)}
    for task, (out, argv, env) in runs.items():
        assert out.returncode == 0, out.stderr
        assert argv[0] == "-m"
        # credentials from the files, in the environment only, never in the command
        assert env["PGPASSFILE"] == str(tmp_path / "home" / ".sweep" / "pgpass")
        assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == \
            ("alice", "ml:secret-2")
        assert env["OPENBLAS_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "8"
        assert not [a for a in argv if "secret" in a or password_in(a)]
    (_, argv0, _), (_, argv5, _) = runs[0], runs[5]
    dirs = [a for a in argv0 + argv5 if a.startswith("hydra.sweep.dir=")]
    assert dirs[0].endswith("/task-0") and dirs[1].endswith("/task-5")
    assert [a for a in argv0 if a not in dirs] == [a for a in argv5 if a not in dirs]  # same study

    cfg = hydra_cfg(argv5[1:])
    assert cfg.hydra.sweeper.storage == "postgresql+psycopg://sweep@db.example.org:5432/optuna"
    assert cfg.hydra.sweeper.study_name == "lora_slurm" and cfg.hydra.sweeper.n_trials == 64
    assert cfg.mlflow.tracking_uri == "http://mlflow.example.org:5000"
    assert cfg.hydra.sweep.dir == f"{ROOT}/outputs/slurm/lora_slurm/task-5"
    assert cfg.hydra.runtime.choices["hydra/launcher"] == "basic"  # trials in `sweep` itself
    assert cfg.hydra.runtime.choices["model"] == "tiny"  # extra overrides reach the command


def test_the_sbatch_script_stops_without_credentials(tmp_path: Path) -> None:
    out, _, _ = _run_sbatch(tmp_path, 0)
    assert out.returncode == 2 and ".sweep/pgpass" in out.stderr
    _credentials(tmp_path)
    (tmp_path / "home" / ".sweep" / "pgpass").chmod(0o644)
    out, _, _ = _run_sbatch(tmp_path, 0)
    assert out.returncode == 2 and "chmod 600" in out.stderr
    (tmp_path / "home" / ".sweep" / "pgpass").chmod(0o600)
    (tmp_path / "home" / ".sweep" / "mlflow").unlink()
    out, _, _ = _run_sbatch(tmp_path, 0)
    assert out.returncode == 2 and ".sweep/mlflow" in out.stderr
    out, argv, env = _run_sbatch(tmp_path, 0, PGPASSWORD="x", MLFLOW_TRACKING_USERNAME="u",
                                 MLFLOW_TRACKING_PASSWORD="p")
    assert out.returncode == 0 and "PGPASSFILE" not in env and argv[0] == "-m"
    # libpq's own ~/.pgpass (the shared set-up in docs/many-machines.md writes it) when
    # ~/.sweep/pgpass is absent
    (tmp_path / "home" / ".sweep" / "pgpass").rename(tmp_path / "home" / ".pgpass")
    out, argv, env = _run_sbatch(tmp_path, 0, MLFLOW_TRACKING_USERNAME="u",
                                 MLFLOW_TRACKING_PASSWORD="p")
    assert out.returncode == 0 and env["PGPASSFILE"] == str(tmp_path / "home" / ".pgpass")


# -- submitit ----------------------------------------------------------------------------
def test_the_documented_submitit_line_composes() -> None:
    overrides = doc_command(".venv/bin/sweep -m hydra/launcher=submitit_slurm")
    cfg = hydra_cfg(overrides)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "sweep_optuna"
    assert launcher.max_num_timeout == 0  # a trial is not resumable: no requeue on timeout
    given = dict(o.split("=", 1) for o in overrides if o.startswith("hydra.launcher."))
    for key, value in given.items():
        assert str(launcher[key.split(".", 2)[2]]) == value, key
    assert int(cfg.hydra.sweeper.n_workers) > 1  # one SLURM job in flight per process
    assert cfg.hydra.sweeper.storage.startswith("postgresql+psycopg://")
    assert cfg.mlflow.tracking_uri.startswith("http")


@pytest.mark.slow
def test_a_stopped_joblib_sweep_leaves_nothing_running(tmp_path: Path, qa_file: Path,
                                                       mlflow_store: str) -> None:
    """SIGTERM to the sweeper while a loky worker trains: joblib kills the worker before
    it can tell Optuna, so the sweeper tells FAIL itself (before: RUNNING until the next
    run of the command)."""
    import signal
    import time

    storage = f"sqlite:///{tmp_path}/o.db"
    cmd = [sys.executable, "-m", "sweep", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           *tiny_overrides(tmp_path, qa_file, "train.iters=4000"), "hydra.sweeper.n_trials=1",
           f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=s",
           f"hydra.sweep.dir={tmp_path}/sweep", "eval.after_sweep=false", "registry.after_sweep=false"]
    sweeper = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # the job is training and has reported once
            try:
                trials = optuna.load_study(study_name="s", storage=storage).trials
            except Exception:  # noqa: BLE001  (not made yet)
                trials = []
            if trials and trials[0].intermediate_values:
                break
            time.sleep(0.3)
        sweeper.send_signal(signal.SIGTERM)
        out = sweeper.communicate(timeout=120)[0]
    finally:
        if sweeper.poll() is None:
            sweeper.kill()
    assert sweeper.returncode == 143, out[-3000:]
    trial = optuna.load_study(study_name="s", storage=storage).trials[0]
    assert trial.state == TrialState.FAIL and "stopped" in trial.user_attrs["fail_reason"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/m.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
