"""``sweep-status``: a study built with Optuna alone (no training) in a temporary SQLite
storage, read by the command as a subprocess: counts by state (not-run trials apart), the
best trial, the Pareto front, running trials with host, pid, age, last value and heartbeat
(stale after the grace period), recent failures, text and JSON, ``status.watch`` ended by
Ctrl-C, and the refusals (no such study, no such file, not a study storage), which are one
line, exit 2, and create nothing. Then optuna-dashboard's own loader reads the same study."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import ROOT
from sweep.cli.status import with_quiet
from sweep.config.resolvers import data_id

# the default SIGINT handler even under a parent that ignores it (a background shell)
CODE = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from sweep.cli.status import main; main()")
STATUS = [sys.executable, "-c", CODE]
SPACE = {"lora.rank": CategoricalDistribution([4, 8, 16, 32]),
         "lora.alpha": CategoricalDistribution([8, 16, 32, 64]),
         "optimizer.lr": FloatDistribution(5e-5, 2e-3, log=True)}
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
HEARTBEAT = 5  # seconds (the study's heartbeat_interval attr, as the sweeper stores it)


def _params(rank: int, alpha: int, lr: float) -> Dict[str, Any]:
    return {"lora.rank": rank, "lora.alpha": alpha, "optimizer.lr": lr}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Dict[str, Any]:
    """Trials 0-1 COMPLETE (1 best), 2 PRUNED, 3 FAIL, 4 FAIL not run, 5 RUNNING with
    values and a heartbeat, 6 RUNNING with neither, 7 WAITING; and a Pareto study."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tmp = tmp_path_factory.mktemp("status")
    data = tmp / "contracts.jsonl"  # named, never read: the study name is derived from it
    name = f"lora_tiny_{data_id('jsonl', str(data))}"  # the sweeper's default name
    url = f"sqlite:///{tmp}/optuna.db"
    storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT)
    study = optuna.create_study(storage=storage, study_name=name)
    study.set_user_attr("objectives", ["val_loss"])
    study.set_user_attr("heartbeat_interval", HEARTBEAT)
    add = lambda p, **kw: study.add_trial(create_trial(params=p, distributions=SPACE, **kw))
    add(_params(8, 16, 3e-4), value=1.25, intermediate_values={8: 1.5, 16: 1.3})
    add(_params(16, 32, 1e-3), value=1.1, intermediate_values={8: 1.4, 16: 1.2})
    add(_params(4, 8, 5e-5), state=TrialState.PRUNED, intermediate_values={8: 2.5})
    add(_params(32, 64, 2e-3), state=TrialState.FAIL,
        user_attrs={"fail_reason": "TrialFailed: val_loss is nan at step 8\nmore detail"})
    add(_params(8, 8, 1e-4), state=TrialState.FAIL,
        user_attrs={"not_run": True, "fail_reason": "not run: 4 trials before it took ..."})
    for rank, host, pid in ((16, "worker-a", 4242), (32, "worker-b", 99)):
        study.enqueue_trial(_params(rank, 16, 2e-4))
        trial = study.ask(SPACE)
        trial.set_user_attr("sweeper_host", host)
        trial.set_user_attr("sweeper_pid", pid)
    study.enqueue_trial(_params(4, 16, 2e-4))  # WAITING
    running = study.get_trials(states=(TrialState.RUNNING,))[0]
    running_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(name), running.number)
    trial = optuna.trial.Trial(study, running_id)
    trial.report(1.7, 8)
    trial.report(1.6, 16)
    storage.record_heartbeat(running_id)
    beat_at = time.time()
    pareto = optuna.create_study(storage=storage, study_name="pareto_tiny",
                                 directions=["minimize", "minimize"])
    pareto.set_user_attr("objectives", ["val_loss", "trainable_parameters"])
    for rank, values in ((4, [1.5, 40960.0]), (8, [1.3, 81920.0]), (16, [1.35, 163840.0])):
        pareto.add_trial(create_trial(params=_params(rank, 16, 2e-4), distributions=SPACE,
                                      values=values))
    return {"tmp": tmp, "url": url, "name": name, "data": data, "db": tmp / "optuna.db",
            "beat_at": beat_at, "study": study}


def run(built: Dict[str, Any], *args: str, cwd: Path = None) -> subprocess.CompletedProcess:
    """``sweep-status`` on the built study, composed as ``sweep -m model=tiny data=jsonl
    data.path=...`` would be (so its default study name is the built one)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    cmd = [*STATUS, "model=tiny", "data=jsonl", f"data.path={built['data']}",
           f"hydra.sweeper.storage={built['url']}", *args]
    return subprocess.run(cmd, cwd=cwd or built["tmp"], env=env, capture_output=True,
                          text=True, timeout=120)


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_text(built, tmp_path: Path) -> None:
    before = digest(built["db"])
    out = run(built, "hydra.sweeper.n_trials=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    elapsed = time.time() - built["beat_at"]
    lines = out.stdout.splitlines()
    assert lines[:8] == [
        f"study       {built['name']}",
        f"storage     {built['url']}",
        "objectives  val_loss (minimize)",
        "progress    3 of 7 finished (complete or pruned)",
        "trials      COMPLETE 2, PRUNED 1, FAIL 1, RUNNING 2, WAITING 1; not run 1",
        "best        trial 1: val_loss 1.1000  lora.rank=16 lora.alpha=32 optimizer.lr=0.001",
        f"running     2 (heartbeat every {HEARTBEAT} s, stale after 120 s without one)",
        lines[7]], out.stdout
    first = re.fullmatch(r"  trial 5  worker-a pid 4242  age (\d+)s  step 16: 1\.6000  "
                         r"heartbeat (\d+) s ago", lines[7])
    assert first, lines[7]
    age, beat = map(int, first.groups())
    # SQLite stamps and reads heartbeats in whole seconds: up to 1 s either way
    assert beat <= age + 1 and age <= elapsed + 60 and beat <= elapsed + 1, (age, beat, elapsed)
    assert re.fullmatch(r"  trial 6  worker-b pid 99  age \d+s  no value yet  no heartbeat yet",
                        lines[8]), lines[8]
    assert lines[9:] == ["failures    the 1 most recent",
                         "  trial 3  TrialFailed: val_loss is nan at step 8"], out.stdout
    # read-only: the database is byte for byte the same, and no run folder was made
    assert digest(built["db"]) == before
    assert list(tmp_path.iterdir()) == []


def test_json_and_stale_after_the_grace_period(built) -> None:
    time.sleep(max(0.0, built["beat_at"] + 2.5 - time.time()))  # SQLite stamps whole seconds
    out = run(built, "status.format=json", "hydra.sweeper.grace_period=1")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    running = got.pop("running")
    assert got.pop("time")
    assert got == {
        "study": built["name"], "storage": built["url"], "objectives": ["val_loss"],
        "directions": ["minimize"], "n_trials": 6, "finished": 3,
        "states": {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1, "RUNNING": 2, "WAITING": 1},
        "not_run": 1,
        "best": {"number": 1, "values": [1.1], "params": _params(16, 32, 1e-3)},
        "pareto_front": None, "whole_budget": None, "heartbeat_interval": HEARTBEAT,
        "grace_period": 1,
        "recent_failures": [{"number": 3, "reason": "TrialFailed: val_loss is nan at step 8"}],
    }
    beating, silent = running
    assert beating.pop("heartbeat_seconds") >= 2 and beating.pop("age_seconds") >= 2
    assert beating == {"number": 5, "params": _params(16, 16, 2e-4), "host": "worker-a",
                       "pid": 4242, "last_step": 16, "last_value": 1.6, "stale": True}
    assert silent.pop("age_seconds") >= 2
    assert silent == {"number": 6, "params": _params(32, 16, 2e-4), "host": "worker-b",
                      "pid": 99, "last_step": None, "last_value": None,
                      "heartbeat_seconds": None, "stale": False}  # no beat: never stale
    text = run(built, "hydra.sweeper.grace_period=1")
    assert re.search(r"^  trial 5 .* heartbeat \d+ s ago  STALE$", text.stdout, re.M), text.stdout
    assert "STALE" not in text.stdout.splitlines()[8]


def test_pareto_front(built) -> None:
    out = run(built, "hparams_search=pareto", "hydra.sweeper.study_name=pareto_tiny")
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[2:8] == [
        "objectives  val_loss (minimize), trainable_parameters (minimize)",
        "progress    3 of 12 finished (complete or pruned)",
        "trials      COMPLETE 3, PRUNED 0, FAIL 0, RUNNING 0, WAITING 0; not run 0",
        "pareto      2 trial(s) on the front",
        "  trial 0: val_loss 1.5000, trainable_parameters 40960  lora.rank=4 lora.alpha=16 "
        "optimizer.lr=0.0002",
        "  trial 1: val_loss 1.3000, trainable_parameters 81920  lora.rank=8 lora.alpha=16 "
        "optimizer.lr=0.0002"], out.stdout
    got = json.loads(run(built, "hparams_search=pareto", "hydra.sweeper.study_name=pareto_tiny",
                         "status.format=json", "status.front=1").stdout)
    assert got["best"] is None and got["pareto_front"] == {
        "size": 2, "trials": [{"number": 0, "values": [1.5, 40960.0],
                               "params": _params(4, 16, 2e-4)}]}


def test_watch_prints_json_lines_until_ctrl_c(built) -> None:
    cmd = [*STATUS, "model=tiny", "data=jsonl", f"data.path={built['data']}",
           f"hydra.sweeper.storage={built['url']}", "status.watch=0.2", "status.format=json"]
    proc = subprocess.Popen(cmd, cwd=built["tmp"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline(), proc.stdout.readline()]  # two prints
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    for line in lines + rest.splitlines():
        assert json.loads(line)["study"] == built["name"]


def _one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.stdout, out.stderr[-2000:])
    assert out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
    return out.stderr.strip()


def test_missing_study_lists_the_studies_there(built) -> None:
    error = _one_line_error(run(built, "hydra.sweeper.study_name=lora_nope"))
    assert error == (f"sweep-status: hydra.sweeper.study_name=lora_nope: no such study in "
                     f"{built['url']} (studies there: {built['name']}, pareto_tiny)")


def test_missing_sqlite_file_is_refused_and_not_created(built, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "optuna.db"
    error = _one_line_error(run(built, f"hydra.sweeper.storage=sqlite:///{missing}",
                                cwd=tmp_path))
    assert error.startswith(f"sweep-status: hydra.sweeper.storage=sqlite:///{missing}: "
                            f"no such SQLite file {missing}"), error
    assert list(tmp_path.iterdir()) == []  # neither the file nor its folder


def test_storages_that_are_not_studies(built, tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    error = _one_line_error(run(built, f"hydra.sweeper.storage=sqlite:///{empty}"))
    assert "hydra.sweeper.storage=" in error and "no Optuna study tables" in error
    assert empty.stat().st_size == 0
    error = _one_line_error(run(built, "hydra.sweeper.storage=postgresql://sweep@127.0.0.1:1/x"))
    assert error.startswith("sweep-status: hydra.sweeper.storage=postgresql://sweep@127.0.0.1:1/x"
                            ": cannot open the study's storage (OperationalError: "), error
    out = run(built, "hydra.sweeper.storage=postgresql://sweep:hunter2@127.0.0.1:1/x")
    assert "hunter2" not in _one_line_error(out)  # refused before Hydra sees it
    assert "status.watch" in _one_line_error(run(built, "status.watch=-1"))


def test_fast_without_mlx(built) -> None:
    start = time.time()
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", CODE,
                          f"hydra.sweeper.storage={built['url']}",
                          f"hydra.sweeper.study_name={built['name']}"],
                         cwd=built["tmp"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("study"), out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "optuna" in imported and not imported & {"mlx", "mlx_lm", "mlflow", "matplotlib"}
    assert time.time() - start < 20


@pytest.mark.parametrize("argv, expected", [
    ([], ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none",
          "hydra/hydra_logging=none"]),
    (["--cfg", "job", "a=1"], ["--cfg", "job", "hydra.run.dir=.", "hydra.output_subdir=null",
                               "hydra/job_logging=none", "hydra/hydra_logging=none", "a=1"]),
    (["a=1", "hydra.run.dir=x", "-p", "a"], ["hydra.output_subdir=null",
                                             "hydra/job_logging=none", "hydra/hydra_logging=none",
                                             "a=1", "hydra.run.dir=x", "-p", "a"]),
])
def test_nothing_written_unless_asked(argv: List[str], expected: List[str]) -> None:
    assert with_quiet(argv) == expected


def test_console_script() -> None:
    assert 'sweep-status = "sweep.cli.status:main"' in (ROOT / "pyproject.toml").read_text()
    script = Path(sys.executable).parent / "sweep-status"
    job = subprocess.run([str(script), "--cfg", "job", "-p", "status", "status.watch=10"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert job.returncode == 0 and "watch: 10.0" in job.stdout, job.stderr[-2000:]


# -- optuna-dashboard -----------------------------------------------------------------


def _get(app, path: str) -> Dict[str, Any]:
    environ: Dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: List[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:500])
    return json.loads(body)


def test_optuna_dashboard_reads_the_study(built) -> None:
    """optuna-dashboard's own loader (``wsgi(storage_url)``: its ``get_storage``) and its
    JSON API, called in-process: the study list and the study's trials, params, values
    and intermediate values, as Optuna reads them."""
    from optuna_dashboard import wsgi

    app = wsgi(built["url"])
    listed = {s["study_name"]: s for s in _get(app, "/api/studies")["study_summaries"]}
    assert set(listed) == {built["name"], "pareto_tiny"}
    assert listed[built["name"]]["directions"] == ["minimize"]
    detail = _get(app, f"/api/studies/{listed[built['name']]['study_id']}")
    assert detail["name"] == built["name"]
    assert [t["number"] for t in detail["best_trials"]] == [1]
    trials = optuna.load_study(study_name=built["name"], storage=built["url"]).trials
    assert len(detail["trials"]) == len(trials) == 8
    for shown, trial in zip(detail["trials"], trials):
        assert shown["number"] == trial.number
        assert shown["state"] == trial.state.name.capitalize()
        assert {p["name"]: p["param_external_value"] for p in shown["params"]} == \
            {k: str(v) for k, v in trial.params.items()}
        assert shown.get("values") == trial.values
        assert {v["step"]: v["value"] for v in shown["intermediate_values"]} == \
            trial.intermediate_values
        assert {a["key"]: a["value"] for a in shown["user_attrs"]} == \
            {k: str(v) for k, v in trial.user_attrs.items()}


def test_the_winner_line_while_and_after_it_trains_on_to_its_whole_budget() -> None:
    from sweep.study.status import render_text

    status = {"study": "s", "storage": "sqlite:///o.db", "objectives": ["val_loss"],
              "directions": ["minimize"], "n_trials": 2, "finished": 2,
              "states": {"COMPLETE": 2}, "not_run": 0, "pareto_front": None,
              "best": {"number": 1, "values": [2.5965], "params": {"lora.rank": 16}},
              "running": [], "heartbeat_interval": 30, "grace_period": 120,
              "recent_failures": [], "whole_budget": None}
    assert not [x for x in render_text(status).splitlines() if x.startswith("winner")]
    status["whole_budget"] = {"trial": 1, "state": "running", "host": "h", "pid": 7,
                              "started": time.time() - 125, "search_val_loss": 2.5965}
    line = next(x for x in render_text(status).splitlines() if x.startswith("winner"))
    assert re.fullmatch(r"winner      trial 1 training on to its whole budget \(h pid 7, "
                        r"since 2m0[5-9]s\)", line), line
    status["whole_budget"] = {"trial": 1, "state": "done", "val_loss": 2.3019,
                              "val_loss_se": 0.0572, "search_val_loss": 2.5965,
                              "iterations": 143}
    assert ("winner      trial 1 trained to its whole budget (143 micro-batches): val_loss "
            "2.3019 +- 0.0572 (searched: 2.5965)") in render_text(status).splitlines()
