"""The shared set-up, for real: a PostgreSQL 15 cluster (password authentication) and
``mlflow server`` on it (PostgreSQL backend, served artifacts, basic-auth) on 127.0.0.1,
started here and stopped whatever happens (``tests/servers.py``), and three worker
processes running the same ``sweep -m`` on one study of 9 trials of the tiny model, under
grid sampling and under TPE with a fixed seed. Checked: exactly 9 finished trials, no
duplicate numbers or configurations, one parent run with one child per trial, every
adapter downloadable over HTTP, the winner evaluated and registered once, nothing left
RUNNING, and neither password anywhere. Requests without credentials are refused."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT
from servers import mlflow_server, postgres_cluster

pytestmark = pytest.mark.slow

SEARCHES = {
    "grid": "sampler: grid\n    pruner: none\n    params:\n"
            "      lora.rank: choice(4, 8, 16)\n      lora.alpha: choice(8, 16, 32)\n",
    "tpe": "sampler: tpe\n    seed: 7\n    params:\n      lora.rank: choice(4, 8, 16)\n"
           "      lora.alpha: choice(8, 16, 32)\n"
           "      optimizer.lr: tag(log, interval(1e-4, 1e-2))\n",
}
N_TRIALS, N_WORKERS = 9, 3


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    with postgres_cluster(tmp) as pg, mlflow_server(tmp, pg) as server:
        yield tmp, pg, server


def _auth_get(url: str, user: str = "", password: str = ""):
    request = urllib.request.Request(url)
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return urllib.request.urlopen(request, timeout=10)


def test_requests_without_credentials_are_refused(shared) -> None:
    import psycopg

    _, pg, server = shared
    search = server.url + "/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        _auth_get(search)
    assert refused.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        _auth_get(search, server.admin, "not-the-password")
    assert wrong.value.code == 401
    assert _auth_get(search, server.admin, server.password).status == 200
    dsn = f"host=127.0.0.1 port={pg.port} user=sweep dbname=optuna"
    env_password = os.environ.pop("PGPASSWORD", None)
    try:
        for extra in ("", " password=not-the-password"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(dsn + extra, connect_timeout=5)
        psycopg.connect(dsn + f" password={pg.password}", connect_timeout=5).close()
    finally:
        if env_password is not None:
            os.environ["PGPASSWORD"] = env_password


def _qa(tmp: Path) -> Path:
    qa = tmp / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"What does Article {i % 7} protect? ({i})",
                                      "answer": f"Article {i % 7} protects right {i % 3}."}) + "\n"
                          for i in range(40)))
    return qa


def _sweep_cmd(tmp: Path, qa: Path, storage: str, tracking: str, sweep_dir: str, *extra: str):
    flags = [e for e in extra if e.startswith("--")]  # Hydra's flags before the overrides
    extra = tuple(e for e in extra if not e.startswith("--"))
    return [sys.executable, "-m", "sweep", "-m", *flags, "model=tiny", "data=jsonl",
            f"data.path={qa}",
            "data.test_fraction=0.2", "train.iters=4", "train.epochs=null",
            "train.stop_after_epochs=null", "train.grad_accumulation=1",
            "train.eval_every_iters=2", "train.val_batches=1", "eval.max_tokens=4",
            f"cache_dir={tmp.parent}/cache", f"hydra.sweeper.storage={storage}",
            f"mlflow.tracking_uri={tracking}", f"hydra.sweep.dir={tmp}/{sweep_dir}", *extra]


def _worker_cmd(tmp: Path, qa: Path, conf: Path, storage: str, tracking: str, i: int):
    return _sweep_cmd(tmp, qa, storage, tracking, f"worker{i}", f"--config-dir={conf}",
                      "hparams_search=shared")


def _status_while_running(tmp: Path, storage: str, search: str, env, workers) -> dict:
    """``sweep-status status.format=json`` until it shows two running trials and a
    finished one with a heartbeat (or the workers end): the last such view."""
    cmd = [sys.executable, "-m", "sweep.cli.status", f"--config-dir={tmp / 'conf'}",
           "status.format=json", "hparams_search=shared",
           f"hydra.sweeper.storage={storage}"]
    seen: dict = {}
    out = None
    while any(w.poll() is None for w in workers):
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if out.returncode == 0:
            view = json.loads(out.stdout)
            if len(view["running"]) >= 2 and all(r["heartbeat_seconds"] is not None
                                                  for r in view["running"]):
                seen = view
                if view["finished"]:
                    break
        time.sleep(1)
    assert seen, ("sweep-status never saw two running trials with heartbeats",
                  [w.returncode for w in workers], workers[0].communicate()[0][-3000:],
                  out and (out.returncode, out.stdout[-2000:], out.stderr[-2000:]))
    return seen


@pytest.mark.parametrize("search", ["grid", "tpe"])
def test_three_workers_share_one_study_and_one_record(shared, search: str) -> None:
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    root, pg, server = shared
    tmp = root / search
    (tmp / "conf" / "hparams_search").mkdir(parents=True)
    (tmp / "conf" / "hparams_search" / "shared.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/sweeper: sweep_optuna\nhydra:\n"
        f"  sweeper:\n    n_trials: {N_TRIALS}\n    study_name: shared_{search}\n    "
        + SEARCHES[search])
    qa = _qa(tmp)
    storage = pg.url("optuna")
    env = {**os.environ, **pg.env, **server.env}
    started = time.monotonic()
    workers = [subprocess.Popen(_worker_cmd(tmp, qa, tmp / "conf", storage, server.url, i),
                                cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
               for i in range(N_WORKERS)]
    seen = _status_while_running(tmp, storage, search, env, workers)
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    seconds = time.monotonic() - started
    for worker, out in zip(workers, outputs):
        assert worker.returncode == 0, out[-4000:]

    os.environ.update(pg.env)  # this process reads the study and the runs too
    os.environ.update(server.env)
    study = optuna.load_study(study_name=f"shared_{search}", storage=storage)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    configs = {tuple(sorted(t.params.items())) for t in finished}
    numbers = [t.number for t in study.trials]
    running = [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    hosts = {(t.user_attrs.get("sweeper_pid")) for t in finished}
    assert len(finished) == N_TRIALS and len(configs) == N_TRIALS
    assert len(set(numbers)) == len(numbers) and not running
    assert len(hosts) > 1  # the workers shared the trials

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("sweep")
    runs = client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`sweep.study` = 'shared_{search}'")
    parents = [r for r in runs if r.data.tags.get("sweep.kind") == "study"]
    children = [r for r in runs if "sweep.trial" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    assert sorted(int(r.data.tags["sweep.trial"]) for r in children) == sorted(
        t.number for t in study.trials if t.user_attrs.get("mlflow_run_id"))
    assert all(r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id for r in children)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for t in finished:  # through the server's artifact proxy: mlflow-artifacts:/ over HTTP
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        local = Path(download_artifacts(run_id=run.info.run_id, artifact_path="adapter",
                                        dst_path=str(tmp / "downloaded" / str(t.number)),
                                        tracking_uri=server.url))
        assert (local / "adapters.safetensors").stat().st_size > 0
    # the winner: evaluated once and registered once, whichever worker ended last
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    evaluations = [a.path for a in client.list_artifacts(best_run, "eval")]
    versions = client.search_model_versions(f"name='sweep-shared_{search}'")
    assert len(evaluations) == 1 and len(versions) == 1, (evaluations, versions)
    assert client.get_model_version_by_alias(f"sweep-shared_{search}", "best").run_id == best_run
    said = "\n".join(outputs)

    # sweep-status, from another process, saw the workers' trials as they ran
    worker_pids = {w.pid for w in workers}
    assert seen["study"] == f"shared_{search}" and seen["n_trials"] == N_TRIALS
    assert seen["running"] and {r["pid"] for r in seen["running"]} <= worker_pids
    assert all(r["host"] and r["heartbeat_seconds"] is not None and not r["stale"]
               for r in seen["running"])
    assert seen["finished"] + len(seen["running"]) <= N_TRIALS
    assert sum(seen["states"].values()) == len(numbers) or seen["finished"] < N_TRIALS

    for secret in (pg.password, server.password):
        assert secret not in said
        for path in tmp.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
        for r in runs:
            assert secret not in json.dumps([r.data.params, r.data.tags])
    print(f"\n[shared set-up, {search}] {N_WORKERS} workers, {len(finished)} trials finished "
          f"in {seconds:.0f} s, {len(study.trials) - len(finished)} not finished, duplicates "
          f"{N_TRIALS - len(configs)}, parent runs {len(parents)}, runs left RUNNING 0, "
          f"held-out evaluations of the winner {len(evaluations)}, registered versions {len(versions)}")


# -- faults on the shared set-up ---------------------------------------------------------
FAULT_SWEEP = ("hydra.sweeper.n_trials=4", "eval.after_sweep=false", "registry.after_sweep=false")


def _finished(study: optuna.Study):
    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


# a command run as if on another machine: its own UTS namespace, host name "machine-b"
ON_MACHINE_B = ["unshare", "--uts", *([] if os.geteuid() == 0 else ["--map-root-user"]),
                "sh", "-c", 'hostname machine-b && exec "$@"', "sh"]


def test_a_worker_killed_on_another_machine_ends_fail_by_its_heartbeat(shared) -> None:
    """Worker A runs on "machine-b" (its own UTS namespace: another host name, so no
    process check can see it died) and is SIGKILLed mid-step; worker B fails A's trial
    once its heartbeat is older than the grace period, and completes the study."""
    root, pg, server = shared
    tmp = root / "killed"
    tmp.mkdir()
    qa, storage = _qa(tmp), pg.url("optuna")
    env = {**os.environ, **pg.env, **server.env}
    extra = (*FAULT_SWEEP, "hydra.sweeper.study_name=killed",
             "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4")
    a = subprocess.Popen([*ON_MACHINE_B, *_sweep_cmd(tmp, qa, storage, server.url, "a", *extra)],
                         cwd=ROOT, env={**env, "SWEEP_FAULT": "train_step:kill@3"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    a_out = a.communicate(timeout=600)[0]
    assert a.returncode == -9, a_out[-3000:]
    b = subprocess.run(_sweep_cmd(tmp, qa, storage, server.url, "b", *extra), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    said = b.stdout + b.stderr
    assert b.returncode == 0, said[-3000:]
    os.environ.update(pg.env)
    study = optuna.load_study(study_name="killed", storage=storage)
    dead = [t for t in study.trials if t.user_attrs.get("sweeper_host") == "machine-b"]
    assert len(dead) == 1 and dead[0].state == TrialState.FAIL
    assert f"trial {dead[0].number} sent no heartbeat" in said and "machine-b" in said
    assert len(_finished(study)) == 4
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    from mlflow.tracking import MlflowClient

    os.environ.update(server.env)
    client = MlflowClient(tracking_uri=server.url)
    assert client.get_run(dead[0].user_attrs["mlflow_run_id"]).info.status == "FAILED"


def test_a_trial_killed_on_another_machine_goes_on_here_from_its_mlflow_checkpoint(
        shared) -> None:
    """As above, but the trial had written checkpoints (to the MLflow server too: an http
    tracking URI logs them) and machine-b's disk is gone with it: worker B retries the
    trial here from the server's copy, and its MLflow run goes on to FINISHED."""
    root, pg, server = shared
    tmp = root / "moved"
    tmp.mkdir()
    qa, storage = _qa(tmp), pg.url("optuna")
    env = {**os.environ, **pg.env, **server.env}
    extra = (*FAULT_SWEEP, "hydra.sweeper.study_name=moved", "hydra.sweeper.n_trials=2",
             "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4",
             "train.iters=8", "train.save_every=1", "hydra.sweeper.pruner=none")
    a = subprocess.Popen([*ON_MACHINE_B, *_sweep_cmd(tmp, qa, storage, server.url, "a", *extra)],
                         cwd=ROOT, env={**env, "SWEEP_FAULT": "train_step:kill@6"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    a_out = a.communicate(timeout=600)[0]
    assert a.returncode == -9, a_out[-3000:]
    shutil.rmtree(tmp / "a")  # machine-b's disk, with the checkpoints on it
    b = subprocess.run(_sweep_cmd(tmp, qa, storage, server.url, "b", *extra), cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    said = b.stdout + b.stderr
    assert b.returncode == 0, said[-3000:]
    os.environ.update(pg.env)
    study = optuna.load_study(study_name="moved", storage=storage)
    dead = next(t for t in study.trials if t.user_attrs.get("sweeper_host") == "machine-b")
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number)
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert "fetched from its MLflow run" in said
    assert len(_finished(study)) == 2
    from mlflow.tracking import MlflowClient

    os.environ.update(server.env)
    client = MlflowClient(tracking_uri=server.url)
    run = client.get_run(dead.user_attrs["mlflow_run_id"])
    assert run.info.run_id == retry.user_attrs["mlflow_run_id"]  # the same run, continued
    assert run.info.status == "FINISHED" and "inherited" in run.data.tags["sweep.resumed_from"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # one curve, nothing twice


def test_postgres_restarted_mid_sweep(shared) -> None:
    """The worker stops with one line saying the storage stopped answering; the same
    command, once PostgreSQL is back, completes the study: nothing finished is lost."""
    root, pg, server = shared
    tmp = root / "restart"
    tmp.mkdir()
    qa, storage = _qa(tmp), pg.url("optuna")
    env = {**os.environ, **pg.env, **server.env}
    os.environ.update(pg.env)
    cmd = _sweep_cmd(tmp, qa, storage, server.url, "sweep", *FAULT_SWEEP,
                     "hydra.sweeper.study_name=restart", "train.iters=8")
    worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # a trial finished, the next one training
            try:
                trials = optuna.load_study(study_name="restart", storage=storage).trials
            except Exception:  # noqa: BLE001  (not created yet)
                trials = []
            if any(t.state.is_finished() for t in trials) and any(
                    t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
                break
            time.sleep(0.2)
        before = {t.number: (t.state, t.values) for t in trials if t.state.is_finished()}
        pg.stop("fast")
        time.sleep(2)
    finally:
        pg.start()
    said = worker.communicate(timeout=600)[0]
    assert worker.returncode == 2, said[-3000:]
    assert "the study's storage stopped answering" in said and "Traceback" not in said
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    study = optuna.load_study(study_name="restart", storage=storage)
    assert {n: (study.trials[n].state, study.trials[n].values) for n in before} == before
    assert len(_finished(study)) == 4
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


def test_an_unreachable_mlflow_server_leaves_the_study_as_it_was(shared) -> None:
    root, pg, _ = shared
    tmp = root / "unreachable"
    tmp.mkdir()
    from servers import free_port

    qa, storage = _qa(tmp), pg.url("optuna")
    url = f"http://127.0.0.1:{free_port()}"
    out = subprocess.run(_sweep_cmd(tmp, qa, storage, url, "sweep", *FAULT_SWEEP,
                                    "hydra.sweeper.study_name=unreachable"),
                         cwd=ROOT, env={**os.environ, **pg.env}, capture_output=True, text=True,
                         timeout=300)
    said = out.stdout + out.stderr
    assert out.returncode == 2 and f"mlflow.tracking_uri={url}: no MLflow server answers" in said
    assert "Traceback" not in said, said[-3000:]
    os.environ.update(pg.env)
    names = optuna.get_all_study_names(storage=storage)
    if "unreachable" in names:  # made before the tracking check: it must hold no trial
        assert optuna.load_study(study_name="unreachable", storage=storage).trials == []
