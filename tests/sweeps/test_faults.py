"""Faults (tiny model): SIGTERM and Ctrl-C (SIGINT) in the middle of training give one line
and exit 143 / 130, no traceback, and nothing left RUNNING (the trial's MLflow run KILLED,
in a sweep its Optuna trial FAIL and the study's run KILLED); two sweeps started at once on
fresh SQLite stores both work, with exact counts."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from conftest import ROOT, tiny_overrides
from sweep.study.trials import ran
from sweep.paths import sqlite_init_lock

pytestmark = pytest.mark.slow


def _runs(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def _wait_for_training(process: subprocess.Popen, uri: str, db: Path) -> None:
    """Until a trial's run is RUNNING and has logged a training step."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        if db.exists():
            with sqlite_init_lock(uri):  # as sweep itself opens a fresh store
                runs = _runs(uri)
            if any(r.info.status == "RUNNING" and "train_loss" in r.data.metrics for r in runs):
                return
        time.sleep(0.5)
    raise AssertionError("the trial never started training")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_trial_is_killed_not_left_running(tmp_path: Path, qa_file: Path, sig,
                                                    status, mlflow_store: str) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow/m.db"
    cmd = [sys.executable, "-m", "sweep",
           *tiny_overrides(tmp_path, qa_file, "train.iters=4000"),
           f"hydra.run.dir={tmp_path}/run"]
    # Ctrl-C's default action, as in a terminal, even when this suite runs in the background:
    # a shell without job control starts background commands with SIGINT ignored, and a
    # Python started so never installs its KeyboardInterrupt handler (a CI run saw a timeout)
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=_default_sigint)
    try:
        _wait_for_training(process, uri, tmp_path / "mlflow" / "m.db")
        process.send_signal(sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == status, err[-3000:]
    assert "Traceback" not in err and "Run the same command" in err
    assert [r.info.status for r in _runs(uri)] == ["KILLED"]


def test_sigterm_to_a_sweep_leaves_nothing_running(tmp_path: Path, qa_file: Path,
                                                   mlflow_store: str) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow/m.db"
    cmd = [sys.executable, "-m", "sweep", "-m",
           *tiny_overrides(tmp_path, qa_file, "train.iters=4000"),
           "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db",
           "hydra.sweeper.study_name=s", f"hydra.sweep.dir={tmp_path}/sweep"]
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        _wait_for_training(process, uri, tmp_path / "mlflow" / "m.db")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    statuses = sorted(r.info.status for r in _runs(uri))
    assert statuses == ["KILLED", "KILLED"]  # the study's run and its trial's
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert "SIGTERM" in study.trials[0].user_attrs.get("fail_reason", "")


@pytest.mark.parametrize("n", [2, 3])
def test_sweeps_started_at_once_on_fresh_stores(tmp_path: Path, qa_file: Path, n: int) -> None:
    """All create the Optuna and MLflow tables of new SQLite files at the same moment
    (before: ``UNIQUE constraint failed: alembic_version`` in one of two), then work one
    study and one MLflow database together: exact counts, nothing RUNNING, one parent run.
    With 3, making the parent run is 3 s slow (``parent_run:delay``): before, each process
    that found no parent id in the study made its own (3 studies in MLflow's view)."""
    import os

    env = {**os.environ, **({"SWEEP_FAULT": "parent_run:delay"} if n == 3 else {})}
    cmd = [sys.executable, "-m", "sweep", "-m",
           *tiny_overrides(tmp_path, qa_file, "train.iters=4"), "hydra.sweeper.n_trials=4",
           f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db", "hydra.sweeper.study_name=s",
           "eval.after_sweep=false", "registry.after_sweep=false"]
    processes = [subprocess.Popen([*cmd, f"hydra.sweep.dir={tmp_path}/sweep{i}"], cwd=ROOT,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
                 for i in range(n)]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len({t.number for t in study.trials}) == len(study.trials)
    runs = _runs(f"sqlite:///{tmp_path}/mlflow/m.db")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # a trial asked after the others took n_trials never ran: FAIL, marked, and no run
    launched = [t for t in study.trials if ran(t)]
    assert all(t.state == TrialState.FAIL for t in study.trials if not ran(t))
    assert len([r for r in runs if "sweep.trial" in r.data.tags]) == len(launched)
    # one parent run, made by the process that made the study, every trial's run its child
    parents = [r for r in runs if r.data.tags.get("sweep.kind") == "study"]
    assert len(parents) == 1 and study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
               for r in runs if "sweep.trial" in r.data.tags)


@pytest.mark.parametrize("fault,reason", [
    ("train_step:raise", "RuntimeError: injected fault at train_step"),
    ("evaluation:oom", "MemoryError: injected out-of-memory at evaluation"),
    ("save_adapter:enospc", "No space left on device"),
])
def test_a_bad_trial_fails_with_its_reason_and_the_sweep_goes_on(tmp_path: Path, qa_file: Path,
                                                                 fault, reason,
                                                                 mlflow_store: str) -> None:
    import os

    cmd = [sys.executable, "-m", "sweep", "-m",
           *tiny_overrides(tmp_path, qa_file, "train.iters=4"), "hydra.sweeper.n_trials=3",
           f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db", "hydra.sweeper.study_name=s",
           "hydra.sweeper.max_failure_rate=1.0", f"hydra.sweep.dir={tmp_path}/sweep",
           "eval.after_sweep=false", "registry.after_sweep=false"]
    env = {**os.environ, "SWEEP_FAULT": fault, "SWEEP_FAULT_TRIAL": "1"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    states = {t.number: t.state for t in study.trials}
    assert states[1] == TrialState.FAIL and reason in study.trials[1].user_attrs["fail_reason"]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states.values()) == 3
    runs = {r.data.tags.get("sweep.trial"): r for r in _runs(f"sqlite:///{tmp_path}/mlflow/m.db")}
    assert runs["1"].info.status == "FAILED" and reason in runs["1"].data.tags["sweep.fail_reason"]
    assert not [r for r in runs.values() if r.info.status == "RUNNING"]


KILL_POINTS = ["model_import", "train_step", "train_step@3", "evaluation", "evaluation@2",
               "save_adapter", "mlflow_log", "mlflow_log@4", "trial_end", "between_trials@2",
               "report"]


def test_kill_at_eleven_points_then_the_same_command_completes(tmp_path: Path, qa_file: Path,
                                                               mlflow_store: str) -> None:
    """SIGKILL at each named point in turn (one run each, resuming the study), then the
    same command without a fault: exactly n_trials finished, none lost or repeated,
    nothing RUNNING, every finished trial's adapter artifact loadable, and the report
    matching the study."""
    import os

    from mlflow.artifacts import download_artifacts

    from sweep.config.schema import ModelConfig, ModelSource
    from sweep.models.loader import load_base
    from sweep.training.lora import load_adapter

    n_trials = 5
    db = f"sqlite:///{tmp_path}/mlflow/m.db"
    cmd = [sys.executable, "-m", "sweep", "-m",
           *tiny_overrides(tmp_path, qa_file, "train.iters=4"), f"hydra.sweeper.n_trials={n_trials}",
           f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db", "hydra.sweeper.study_name=s",
           f"hydra.sweep.dir={tmp_path}/sweep", f"cache_dir={tmp_path}/cache",
           "eval.after_sweep=false", "registry.after_sweep=false"]
    for spec in KILL_POINTS:
        name, _, nth = spec.partition("@")
        env = {**os.environ, "SWEEP_FAULT": f"{name}:kill" + (f"@{nth}" if nth else "")}
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == -signal.SIGKILL, f"{spec}: {out.returncode}\n{out.stderr[-2000:]}"
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    configs = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(configs)) == len(configs)  # no trial repeated another
    runs = _runs(db)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_trial = {r.data.tags.get("sweep.trial"): r for r in runs if "sweep.trial" in r.data.tags}
    tiny = ModelConfig(name="tiny", source=ModelSource.tiny, path="tiny", quantize=False)
    for t in finished:
        run = by_trial[str(t.number)]
        assert run.info.status in ("FINISHED", "KILLED")  # KILLED: pruned
        local = Path(download_artifacts(run_id=run.info.run_id, artifact_path="adapter",
                                        tracking_uri=db))
        base = load_base(tiny, cache_dir=str(tmp_path / "cache"), seed=42)
        load_adapter(base.model, local, "tiny")
    best = study.best_trial
    report = tmp_path / "sweep" / "report"
    assert f"# best trial {best.number} of study 's'" in (report / "best_config.yaml").read_text()
    assert (report / "best_adapter" / "adapters.safetensors").read_bytes() == (
        Path(best.user_attrs["output_dir"]) / "adapter" / "adapters.safetensors").read_bytes()
