"""Optuna's gRPC storage proxy (``sweep-proxy``, ``grpc://HOST:PORT`` storages) with the
zero-cost trial runner (``runner._target_=sweep.testing.zero_cost.run``, the load benchmark's): a real two-process
sweep through a real proxy in front of SQLite (every trial finished once, no repeated
configuration, one parent run, the jobs' beats in their trials), ``sweep-status`` through
the proxy, a silent trial failed by its beat, and the refusals (no proxy answering, a bad
address, a proxy of a proxy, a bad port), each one line and exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Dict, Iterator

import optuna
import pytest

from sweep.study.storages import BEAT_ATTR, grpc_address, silent_trials
from sweep.testing.zero_cost import TARGET as ZERO_COST, objective

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_grpc_addresses_are_read_or_refused() -> None:
    assert grpc_address("grpc://127.0.0.1:13000") == ("127.0.0.1", 13000)
    assert grpc_address("grpc://proxy.cluster:8080/") == ("proxy.cluster", 8080)
    assert grpc_address("grpc://[::1]:13000") == ("::1", 13000)
    for bad in ("grpc://host", "grpc://:13000", "grpc://host:0", "grpc://host:99999",
                "grpc://host:port", "grpc://host:13000/db"):
        with pytest.raises(ValueError, match="grpc://HOST:PORT"):
            grpc_address(bad)


def test_a_trial_is_silent_when_its_last_beat_is_older_than_the_grace_period() -> None:
    trial = lambda **attrs: SimpleNamespace(user_attrs=attrs)  # noqa: E731
    fresh, old, never, junk = trial(**{BEAT_ATTR: 995.0}), trial(**{BEAT_ATTR: 900.0}), \
        trial(), trial(**{BEAT_ATTR: "x"})
    assert silent_trials([fresh, old, never, junk], grace_period=60, now=1000.0) == [old]


def test_the_zero_cost_objective_has_its_minimum_near_the_default_sweeps_winner() -> None:
    best = objective(5e-4, 16, 32, 2)
    assert best == pytest.approx(2.6)
    for other in ((5e-5, 16, 32, 2), (5e-4, 4, 32, 2), (5e-4, 16, 16, 2), (5e-4, 16, 32, 8)):
        assert objective(*other) > best + 0.01


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Dict[str, object]]:
    """``sweep-proxy`` in front of a fresh SQLite study storage, stopped whatever happens."""
    port, url = _free_port(), f"sqlite:///{tmp_path}/optuna.db"
    log = tmp_path / "proxy.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(BIN / "sweep-proxy"), f"hydra.sweeper.storage={url}",
                                    f"proxy.port={port}", "proxy.threads=4"],
                                   stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "sweep-proxy did not listen"
            time.sleep(0.2)
        yield {"url": url, "grpc": f"grpc://127.0.0.1:{port}", "process": process, "log": log}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def _sweep(tmp_path: Path, storage: str, *extra: str, env: Dict[str, str] = None,
           timeout: float = 300) -> subprocess.CompletedProcess:
    command = [str(BIN / "sweep"), "-m", "model=tiny", f"hydra.sweeper.storage={storage}",
               f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "eval.after_sweep=false",
               "registry.after_sweep=false", f"hydra.sweep.dir={tmp_path}/sweep",
               f"runner._target_={ZERO_COST}", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env={**os.environ, **(env or {})})


def test_two_workers_through_the_proxy_finish_the_study_once(tmp_path: Path, proxy) -> None:
    done = _sweep(tmp_path, proxy["grpc"], "hydra.sweeper.n_trials=6",
                  "hydra.sweeper.n_workers=2", "hydra.sweeper.study_name=proxied")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study = optuna.load_study(study_name="proxied", storage=proxy["url"])  # the database itself
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 6 and not [t for t in trials if t.state.name == "RUNNING"]
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(keys)) == 6
    assert all(isinstance(t.user_attrs.get(BEAT_ATTR), float) for t in finished)
    assert all(t.user_attrs["proposal_seconds"]["total"] >= t.user_attrs["proposal_seconds"]
               ["ask"] > 0 for t in finished)
    assert {t.user_attrs["pid"] for t in finished}.__len__() == 2  # both processes ran trials
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 7
    assert {r.data.params["zero_cost"] for r in runs if r not in parents} == {"True"}

    status = subprocess.run([str(BIN / "sweep-status"), f"hydra.sweeper.storage={proxy['grpc']}",
                             "hydra.sweeper.study_name=proxied", "hydra.sweeper.n_trials=6"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "6/6" in status.stdout or "6 of 6" in status.stdout, status.stdout

    proxy["process"].send_signal(signal.SIGTERM)
    assert proxy["process"].wait(timeout=30) == 0
    assert "stopped (SIGTERM)" in proxy["log"].read_text()


def test_a_silent_trial_behind_the_proxy_is_failed_by_its_beat(proxy) -> None:
    from optuna.storages import GrpcStorageProxy

    from hydra_plugins.sweep_optuna._storage import fail_stale

    host, port = grpc_address(proxy["grpc"])
    storage = GrpcStorageProxy(host=host, port=port)
    study = optuna.create_study(study_name="beats", storage=storage)
    lost, alive, unstarted = study.ask(), study.ask(), study.ask()
    lost.set_user_attr(BEAT_ATTR, time.time() - 120)  # a machine that went away 2 min ago
    alive.set_user_attr(BEAT_ATTR, time.time())
    fail_stale(study, storage, grace_period=60)
    states = {t.number: t.state.name for t in study.get_trials(deepcopy=False)}
    assert states == {lost.number: "FAIL", alive.number: "RUNNING", unstarted.number: "RUNNING"}


def _one_line_exit_2(done: subprocess.CompletedProcess, *words: str) -> None:
    err = [line for line in (done.stderr + done.stdout).splitlines()
           if "Traceback" in line or "Error" in line.split(":")[0]]
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert not [line for line in err if "Traceback" in line], done.stderr
    text = done.stdout + done.stderr
    for word in words:
        assert word in text, text[-2000:]


def test_bad_proxy_storages_are_one_line_and_exit_2(tmp_path: Path) -> None:
    closed = f"grpc://127.0.0.1:{_free_port()}"
    _one_line_exit_2(_sweep(tmp_path, closed, "hydra.sweeper.n_trials=1"),
                     "no gRPC storage proxy answered", "hydra.sweeper.storage=" + closed)
    _one_line_exit_2(_sweep(tmp_path, "grpc://127.0.0.1", "hydra.sweeper.n_trials=1"),
                     "is not grpc://HOST:PORT")
    proxy_of_proxy = subprocess.run([str(BIN / "sweep-proxy"), f"hydra.sweeper.storage={closed}"],
                                    capture_output=True, text=True, timeout=60, cwd=tmp_path)
    _one_line_exit_2(proxy_of_proxy, "not another proxy")
    bad_port = subprocess.run([str(BIN / "sweep-proxy"), "proxy.port=0",
                               f"hydra.sweeper.storage=sqlite:///{tmp_path}/o.db"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    _one_line_exit_2(bad_port, "proxy.port")
    assert not (tmp_path / "o.db").exists()
    secret = subprocess.run([str(BIN / "sweep-proxy"),
                             "hydra.sweeper.storage=postgresql+psycopg://sweep:hunter22@db/optuna"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    _one_line_exit_2(secret, "PGPASSWORD")
    assert "hunter22" not in secret.stdout + secret.stderr
