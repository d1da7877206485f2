"""The Optuna sweeper end to end on the tiny model: discovery, a small sweep, resume,
pruning, failures, the failure-rate stop, and a kill -9 in the middle of a sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import optuna
import pytest
from optuna.trial import TrialState

import harness
from harness import ROOT

pytestmark = pytest.mark.slow
SEARCHED = {"lora.rank", "lora.alpha", "optimizer.lr", "train.grad_accumulation"}


def test_discovery() -> None:
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]
    assert "SweepOptunaSweeper" in names


def command(tmp: Path, *extra: str, n: int = 4, study: str = "s") -> List[str]:
    """The winner's evaluation and registration are off: tests/shipping/test_eval.py and
    test_registry.py check them on the session's tiny sweep."""
    return harness.sweep_cmd(harness.stores(tmp), "eval.after_sweep=false",
                             "registry.after_sweep=false", *extra, n_trials=n, study=study)


def run(cmd: List[str], zero_cost: bool = False) -> subprocess.CompletedProcess:
    """``zero_cost``: the jobs skip training (the zero-cost runner, sweep.testing.zero_cost)
    and the sweep its winner's evaluation and registration, for tests of the sweeper alone."""
    return harness.run(harness.zero_cost(cmd) if zero_cost else cmd)


def study(tmp: Path, name: str = "s") -> optuna.Study:
    return harness.Stores(tmp).study(name)


def mlflow_runs(tmp: Path):
    return harness.Stores(tmp).runs()


def finished(s: optuna.Study) -> List[optuna.trial.FrozenTrial]:
    return s.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_sweep_resume_and_extend(tmp_path: Path) -> None:
    out = run(command(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    s = study(tmp_path)
    assert len(finished(s)) == len(s.trials) == 4
    assert all(set(t.params) == SEARCHED for t in s.trials)
    client, runs = mlflow_runs(tmp_path)
    parents = [r for r in runs if r.data.tags.get("sweep.kind") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["pruner"] == "paired_median"
    assert "search.optimizer.lr" in parent.data.params
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/leaderboard.csv", "report/leaderboard.md", "report/best_config.yaml",
            "report/plots", "report/best_adapter"} <= report
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "report/plots")}
    assert {"report/plots/optimization_history.png", "report/plots/parallel_coordinate.png",
            "report/plots/intermediate_values.png"} <= plots
    assert "best trial" in out.stdout and "rank" in out.stdout

    again = run(command(tmp_path))  # the same command: nothing left to do
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(study(tmp_path).trials) == 4

    more = run(command(tmp_path, n=6))  # a larger budget: exactly two more
    assert more.returncode == 0, more.stderr[-3000:]
    s = study(tmp_path)
    assert len(s.trials) == len(finished(s)) == 6
    _, runs = mlflow_runs(tmp_path)
    assert len([r for r in runs if r.data.tags.get("sweep.kind") == "study"]) == 1
    assert len(runs) == 7 and {r.info.status for r in runs} <= {"FINISHED", "KILLED"}


def test_pruning_stops_bad_learning_rates_early(tmp_path: Path) -> None:
    out = run(command(tmp_path, "train.iters=16", "hydra.sweeper.sampler=random",
                      "hydra.sweeper.seed=3", "hydra.sweeper.params={optimizer.lr: 'choice(3e-2, 1e-7)'}",
                      n=8))
    assert out.returncode == 0, out.stderr[-3000:]
    s = study(tmp_path)
    pruned = s.get_trials(states=(TrialState.PRUNED,))
    assert pruned, [(t.number, t.state, t.params) for t in s.trials]
    assert any(t.params["optimizer.lr"] == 1e-7 for t in pruned)
    assert all(max(t.intermediate_values) < 16 for t in pruned)  # never at the last evaluation
    trained = sum(max(t.intermediate_values) for t in finished(s))
    assert trained < 8 * 16
    client, runs = mlflow_runs(tmp_path)
    by_trial = {r.data.tags.get("sweep.trial"): r for r in runs}
    for t in pruned:
        run_ = by_trial[str(t.number)]
        assert run_.info.status == "KILLED" and run_.data.tags["sweep.state"] == "PRUNED"
        assert t.number >= 1  # the default pruner: 1 startup trial


def test_the_jobs_prune_with_the_configured_pruner(tmp_path: Path) -> None:
    out = run(command(tmp_path, "train.iters=16", "hydra.sweeper.sampler=random",
                      "hydra.sweeper.seed=3", "hydra.sweeper.params={optimizer.lr: 'choice(3e-2, 1e-7)'}",
                      "+hydra.sweeper.pruner_kwargs.n_startup_trials=100", n=5), zero_cost=True)
    assert out.returncode == 0, out.stderr[-3000:]
    s = study(tmp_path)
    assert len(finished(s)) == 5 and not s.get_trials(states=(TrialState.PRUNED,))
    # the same sweep with the default pruner prunes (so the kwargs above were what stopped it)
    default = run(command(tmp_path, "train.iters=16", "hydra.sweeper.sampler=random",
                          "hydra.sweeper.seed=3", "hydra.sweeper.params={optimizer.lr: "
                          "'choice(3e-2, 1e-7)'}", n=5, study="default"), zero_cost=True)
    assert default.returncode == 0, default.stderr[-3000:]
    assert study(tmp_path, "default").get_trials(states=(TrialState.PRUNED,))


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    out = run(command(tmp_path, "optimizer=sgd", "train.max_grad_norm=null",
                      "hydra.sweeper.params={optimizer.lr: 'choice(1e30, 1e-3)', "
                      "lora.rank: 'choice(-4, 8)'}", "hydra.sweeper.sampler=grid",
                      "hydra.sweeper.max_failure_rate=1.0", n=1))
    assert out.returncode == 0, out.stderr[-3000:]
    s = study(tmp_path)
    failed = s.get_trials(states=(TrialState.FAIL,))
    assert len(finished(s)) == 1 and len(failed) >= 1
    reasons = " ".join(t.user_attrs["fail_reason"] for t in failed)
    assert "NonFiniteLossError" in reasons or "lora.rank=-4" in reasons
    _, runs = mlflow_runs(tmp_path)
    ids = {t.user_attrs.get("mlflow_run_id") for t in failed} - {None}
    assert all(r.info.status == "FAILED" for r in runs if r.info.run_id in ids)


def test_a_sweep_that_keeps_failing_stops(tmp_path: Path) -> None:
    out = run(command(tmp_path, "hydra.sweeper.params={lora.rank: 'choice(-4, -8)'}",
                      "hydra.sweeper.min_trials_for_failure_rate=2", n=10))
    assert out.returncode == 2  # every trial failed on bad input (a rank below 1)
    assert "max_failure_rate" in out.stderr + out.stdout
    failed = study(tmp_path).get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2 and all(t.user_attrs["exit_code"] == 2 for t in failed)


def test_the_same_command_goes_on_after_the_mistake_is_fixed(tmp_path: Path) -> None:
    """Failures of an earlier run do not count towards this run's failure rate: a
    missing data file, then the same command once the file is there."""
    data = tmp_path / "qa.jsonl"
    args = ("data=jsonl", f"data.path={data}", "hydra.sweeper.min_trials_for_failure_rate=2")
    bad = run(command(tmp_path, *args, n=2))
    said = bad.stdout + bad.stderr
    assert bad.returncode == 2 and "run the same command again" in said, said[-2000:]
    with data.open("w") as f:
        for i in range(40):
            f.write(json.dumps({"question": f"What does Article {i} protect?",
                                "answer": f"Article {i} protects a right."}) + "\n")
    fixed = run(command(tmp_path, *args, n=2))
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    s = study(tmp_path)
    assert len(finished(s)) == 2 and len(s.get_trials(states=(TrialState.FAIL,))) == 2


def test_a_changed_choice_list_is_one_line(tmp_path: Path) -> None:
    first = run(command(tmp_path, "hydra.sweeper.params={lora.rank: 'choice(4, 8)'}", n=1),
                zero_cost=True)
    assert first.returncode == 0, first.stderr[-3000:]
    out = run(command(tmp_path, "hydra.sweeper.params={lora.rank: 'choice(4, 16)'}", n=2),
              zero_cost=True)
    said = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in said
    assert "lora.rank is" in said and "name a new hydra.sweeper.study_name" in said


def test_a_study_resumed_at_another_budget_is_one_line(tmp_path: Path) -> None:
    """Trials of one study compare only at one budget: the default search's (an epoch,
    its first 0.17 searched) against a study whose trials trained 8 micro-batches."""
    first = run(command(tmp_path, n=1), zero_cost=True)  # TINY: train.iters=8, no epochs
    assert first.returncode == 0, first.stderr[-3000:]
    out = run(command(tmp_path, "train.epochs=1", "train.stop_after_epochs=0.17", n=2),
              zero_cost=True)
    said = out.stdout + out.stderr
    assert out.returncode == 2 and "Traceback" not in said
    assert ("trained its trials with train.epochs=null train.iters=8 "
            "train.stop_after_epochs=null, this command with train.epochs=1 train.iters=8 "
            "train.stop_after_epochs=0.17") in said, said[-2000:]
    assert len(study(tmp_path).trials) == 1  # nothing asked of the study
    again = run(command(tmp_path, n=2), zero_cost=True)  # the same budget goes on
    assert again.returncode == 0 and len(finished(study(tmp_path))) == 2


@pytest.mark.parametrize("setting,message", [
    ("hydra.sweeper.n_trials=-1", "hydra.sweeper.n_trials=-1: must be >= 1"),
    ("hydra.sweeper.n_workers=0", "hydra.sweeper.n_workers=0: must be >= 1"),
    ("+hydra.sweeper.sampler_kwargs.n_startup=3", "unexpected keyword argument 'n_startup'"),
    ("+hydra.sweeper.pruner_kwargs.zscore=3", "unexpected keyword argument 'zscore'"),
    ("hydra.sweeper.params={optimizer.lr: 'tag(log, interval(0, 1e-3))'}", "needs a start > 0"),
    ("hydra.sweeper.params={optimizer.lr: 'interval(1e-3, 1e-4)'}", "is empty"),
    ("hydra.sweeper.params={lora.rank: 'choice()'}", "empty choice is not legal"),
])
def test_bad_sweeper_settings_are_one_line_and_exit_2(tmp_path: Path, setting, message) -> None:
    out = run(command(tmp_path, setting))
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-2000:]
    assert message in said and "Traceback" not in said
    assert not (tmp_path / "m.db").exists() or not mlflow_runs(tmp_path)[1]


@pytest.mark.parametrize("setting", ["hydra.sweeper.sampler=annealing",
                                     "hydra.sweeper.pruner=patient"])
def test_unknown_sampler_or_pruner_names_the_choices(tmp_path: Path, setting) -> None:
    out = run(command(tmp_path, setting))  # Hydra checks the sweeper's typed config
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "expected one of" in said and "Traceback" not in said


def test_bad_search_space_stops_before_any_trial(tmp_path: Path) -> None:
    out = run(command(tmp_path, "hydra.sweeper.params={lora.rank: 'range(8, 8)'}"))
    assert out.returncode != 0
    assert "lora.rank: range(8, 8, 1) is empty" in out.stderr + out.stdout
    assert not (tmp_path / "m.db").exists() or not mlflow_runs(tmp_path)[1]


def test_kill_9_then_the_same_command_completes(tmp_path: Path) -> None:
    cmd = command(tmp_path, "train.iters=24", n=3)
    log = tmp_path / "first.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.time() + 300
    trials: list = []
    reached = False
    try:
        while time.time() < deadline:  # wait until the second trial is training
            time.sleep(1)
            if proc.poll() is not None:  # ended before it could be killed: say how
                break
            if not (tmp_path / "o.db").exists():
                continue
            try:
                trials = study(tmp_path).trials
            except Exception:
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and t.number >= 1]
            if running and running[0].user_attrs.get("mlflow_run_id"):
                reached = True
                break
        if not reached:
            proc.poll()
            pytest.fail(f"the sweep never reached its second trial (exit {proc.returncode}; "
                        f"trials {[(t.number, t.state.name) for t in trials]}):\n"
                        f"{log.read_text()[-3000:]}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert study(tmp_path).get_trials(states=(TrialState.RUNNING,))
    out = run(cmd)
    assert out.returncode == 0, out.stderr[-3000:]
    s = study(tmp_path)
    assert len(finished(s)) == 3
    assert not s.get_trials(states=(TrialState.RUNNING,))
    assert len(s.get_trials(states=(TrialState.FAIL,))) == 1
    _, runs = mlflow_runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_parallel_workers_share_one_study(tmp_path: Path) -> None:
    out = run(command(tmp_path, "hydra.sweeper.n_workers=2", "train.iters=4", n=4))
    assert out.returncode == 0, out.stderr[-3000:]
    s = study(tmp_path)
    assert len(finished(s)) >= 4 and not s.get_trials(states=(TrialState.RUNNING,))
    assert len({t.user_attrs["sweeper_pid"] for t in s.trials}) == 2


def test_multi_objective_reports_a_pareto_front(tmp_path: Path) -> None:
    out = run(command(tmp_path, "hydra.sweeper.objectives=[val_loss,trainable_parameters]",
                      "hydra.sweeper.sampler=nsga2", "hydra.sweeper.pruner=none",
                      "train.iters=4", n=3, study="pareto"))
    assert out.returncode == 0, out.stderr[-3000:]
    s = study(tmp_path, "pareto")
    assert len(s.directions) == 2 and len(finished(s)) == 3
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in finished(s))
    report = tmp_path / "sweep" / "report"
    assert (report / "pareto_front.csv").is_file() and (report / "plots" / "pareto_front.png").is_file()
