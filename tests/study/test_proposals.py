"""No trial repeats another's configuration: after a resume, with several processes on
one study and with ``hydra.sweeper.n_workers`` (tpe, random, qmc), while a seed and a study
history still give the same proposals. The proposal step is driven directly on SQLite
studies; the slow tests go through the real CLI on the tiny model."""

from __future__ import annotations

import dataclasses
import math
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Dict, List, Tuple

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

import harness
from harness import ROOT
from hydra_plugins.sweep_optuna import _proposals
from hydra_plugins.sweep_optuna._impl import SweeperImpl
from hydra_plugins.sweep_optuna._proposals import SpaceExhausted, suggest, trial_seed
from sweep.study.trials import tell_fail
from hydra_plugins.sweep_optuna._search_space import SearchSpace, grid_values, parse_search_space
from hydra_plugins.sweep_optuna.config import Sampler, SweepOptunaConf

LORA = {"lora.rank": "choice(4, 8, 16, 32)", "lora.alpha": "choice(8, 16, 32, 64)",
        "optimizer.lr": "tag(log, interval(5e-5, 2e-3))",
        "train.grad_accumulation": "choice(1, 2, 4, 8)"}  # conf/hparams_search/lora.yaml
SMALL = {"lora.rank": "choice(4, 8)", "lora.alpha": "choice(8, 16, 32)"}  # 6 points
SAMPLERS = ["tpe", "random", "qmc"]


def key(params: Dict[str, Any]) -> Tuple:
    return tuple(sorted(params.items()))


def repeats(study: optuna.Study) -> int:
    keys = [key(t.params) for t in study.get_trials(states=_proposals.TAKEN)]
    return len(keys) - len(set(keys))


def loss(params: Dict[str, Any]) -> float:
    """A made-up objective, so that TPE has a history to learn from."""
    lr = params.get("optimizer.lr", 1e-3)
    return (math.log10(lr) + 3.3) ** 2 + params["lora.rank"] / params["lora.alpha"]


def open_sweeper(tmp: Path, sampler: str, seed: int = 5) -> Tuple[SweeperImpl, optuna.Study]:
    """A sweeper as a new process builds it: its own Study object and sampler."""
    conf = SweepOptunaConf(storage=f"sqlite:///{tmp}/o.db", study_name="s",
                           sampler=Sampler(sampler), seed=seed)
    impl = SweeperImpl(dataclasses.asdict(conf))
    return impl, impl.open_study(parse_search_space(LORA))


def together(sweepers, work) -> None:
    """``work(impl, study)`` for each sweeper, in threads released at the same moment."""
    start, errors = threading.Barrier(len(sweepers)), []

    def body(impl: SweeperImpl, study: optuna.Study) -> None:
        try:
            start.wait()
            work(impl, study)
        except BaseException as error:  # noqa: BLE001  (reported below)
            errors.append(error)

    threads = [threading.Thread(target=body, args=pair) for pair in sweepers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def run(impl: SweeperImpl, study: optuna.Study, space: SearchSpace, n: int) -> List[Tuple]:
    proposed = []
    for _ in range(n):
        trial = impl.propose(study, space)
        study.tell(trial, loss(trial.params))
        proposed.append(key(trial.params))
    return proposed


# -- helpers -------------------------------------------------------------------------
@pytest.mark.parametrize("distribution", [
    FloatDistribution(1e-5, 1e-2, log=True), FloatDistribution(0.0, 1.0, step=0.25),
    FloatDistribution(-1.0, 1.0), IntDistribution(1, 64, log=True),
    IntDistribution(2, 10, step=2), CategoricalDistribution([4, "x", 0.5, True, None])])
def test_suggest_records_the_distribution(distribution) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    value = suggest(trial, "p", distribution)
    assert trial.distributions["p"] == distribution
    assert trial.params["p"] == value
    assert distribution._contains(distribution.to_internal_repr(value))


def test_trial_seed_is_stable_and_distinct() -> None:
    seeds = {trial_seed(s, n, a) for s in (0, 42, -1) for n in range(50) for a in range(3)}
    assert len(seeds) == 3 * 50 * 3 and all(0 <= s < 2**32 for s in seeds)
    assert trial_seed(42, 7, 1) == trial_seed(42, 7, 1) == 554168000  # the same in every process


# -- proposals on a SQLite study -----------------------------------------------------
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_resume_continues_without_repeats(tmp_path: Path, sampler: str) -> None:
    space = parse_search_space(LORA)
    first, study = open_sweeper(tmp_path / "a", sampler)
    proposed = run(first, study, space, 6)
    again, study = open_sweeper(tmp_path / "a", sampler)  # a new process on the same study
    proposed += run(again, study, space, 8)
    assert repeats(study) == 0 and len(study.trials) == 14
    straight, other = open_sweeper(tmp_path / "b", sampler)  # the same sweep without a stop
    assert run(straight, other, space, 14) == proposed


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_same_seed_gives_the_same_proposals(tmp_path: Path, sampler: str) -> None:
    space = parse_search_space(LORA)
    runs = [run(*open_sweeper(tmp_path / name, sampler, seed), space, 8)
            for name, seed in [("a", 5), ("b", 5), ("c", 6)]]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_two_processes_interleaved_with_running_trials(tmp_path: Path, sampler: str) -> None:
    space = parse_search_space(LORA)
    sweepers = [open_sweeper(tmp_path, sampler), open_sweeper(tmp_path, sampler)]
    running = []
    for i in range(16):  # each asks in turn; two trials are always left RUNNING
        impl, study = sweepers[i % 2]
        running.append((study, impl.propose(study, space)))
        if len(running) > 2:
            s, trial = running.pop(0)
            s.tell(trial, loss(trial.params))
    study = sweepers[0][1]
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 2
    assert repeats(study) == 0 and len(study.trials) == 16


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_two_processes_at_the_same_time(tmp_path: Path, sampler: str) -> None:
    space = parse_search_space(LORA)
    sweepers = [open_sweeper(tmp_path, sampler), open_sweeper(tmp_path, sampler)]
    together(sweepers, lambda impl, study: run(impl, study, space, 7))
    study = sweepers[0][1]
    assert repeats(study) == 0 and len(study.trials) == 14


def test_a_proposal_waits_for_the_trials_before_it(tmp_path: Path) -> None:
    space = parse_search_space(LORA)
    (_, first), (impl, second) = open_sweeper(tmp_path, "random"), open_sweeper(tmp_path, "random")
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = first.ask()  # trial 0: its process died before drawing; not waited for
    orphan.set_user_attr("sweeper_host", socket.gethostname())
    orphan.set_user_attr("sweeper_pid", gone.pid)
    drawing = first.ask()  # trial 1: another process is drawing its params
    proposed: List[optuna.trial.Trial] = []
    waiter = threading.Thread(target=lambda: proposed.append(impl.propose(second, space)))
    waiter.start()
    waiter.join(0.5)
    assert not proposed
    for name, distribution in space.distributions.items():
        suggest(drawing, name, distribution)
    drawing.set_user_attr("overrides", [])
    waiter.join(10)
    assert proposed and proposed[0].number == 2
    assert key(proposed[0].params) != key(drawing.params)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_small_space_is_covered_then_the_sweep_stops(tmp_path: Path, sampler: str) -> None:
    space = parse_search_space(SMALL)
    impl, study = open_sweeper(tmp_path, sampler)
    run(impl, study, space, 6)
    assert repeats(study) == 0 and len(study.trials) == 6
    with pytest.raises(SpaceExhausted, match="all 6 configurations"):
        impl.propose(study, space)
    assert len(study.trials) == 6  # no trial was asked for the 7th


def test_a_sampler_that_only_repeats_itself(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(_proposals, "build_sampler",
                        lambda *args, **kwargs: optuna.samplers.RandomSampler(seed=0))
    space = parse_search_space(SMALL)
    impl, study = open_sweeper(tmp_path, "random")
    run(impl, study, space, 6)
    assert repeats(study) == 0 and len(study.trials) == 6


@pytest.mark.parametrize("by_number", [False, True])
def test_a_fail_tell_on_the_last_grid_point_does_not_raise(tmp_path: Path,
                                                           by_number: bool) -> None:
    """GridSampler.after_trial calls study.stop() on its last point, which raises outside
    optimize(); the sweeper tells FAIL outside optimize() (trial could not start, job died)."""
    space = parse_search_space(SMALL)
    grid = optuna.samplers.GridSampler(grid_values(space), seed=0)

    def on_last_point(name: str) -> Tuple[optuna.Study, optuna.trial.Trial]:
        study = optuna.create_study(storage=f"sqlite:///{tmp_path}/o.db", study_name=name,
                                    sampler=grid)
        for _ in range(5):
            study.tell(study.ask(), 1.0)
        return study, study.ask()

    bare, trial = on_last_point("bare")
    with pytest.raises(RuntimeError, match="Study.stop"):  # what tell_fail guards against
        bare.tell(trial, state=TrialState.FAIL)
    study, trial = on_last_point("guarded")
    if by_number:  # as for a dead process's trial
        tell_fail(study, trial.number)
    else:
        tell_fail(study, trial, "could not start")
    stored = study.trials[-1]
    assert stored.number == trial.number and stored.state == TrialState.FAIL
    assert stored.user_attrs.get("fail_reason") == (None if by_number else "could not start")
    assert study.sampler is grid
    tell_fail(study, trial)  # already finished: nothing happens


# -- end to end on the tiny model ----------------------------------------------------
def command(tmp: Path, *extra: str, n: int = 4, study: str = "s") -> List[str]:
    """What these tests check is the proposals: the trials are the zero-cost runner's."""
    return harness.zero_cost(harness.sweep_cmd(
        harness.stores(tmp), "train.grad_accumulation=choice(1,2,4)", *extra, n_trials=n,
        study=study))


def study_of(tmp: Path) -> optuna.Study:
    return harness.Stores(tmp).study()


def configurations(study: optuna.Study) -> List[Tuple]:
    return [key(t.params) for t in study.get_trials(states=_proposals.TAKEN)]


@pytest.mark.slow
def test_workers_then_a_resume_never_repeat(tmp_path: Path) -> None:
    out = harness.run(command(tmp_path, "hydra.sweeper.n_workers=2"))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = configurations(study_of(tmp_path))
    assert len(seen) == len(set(seen)) == 4, seen
    out = harness.run(command(tmp_path, n=6))
    assert out.returncode == 0, out.stderr[-3000:]
    seen = configurations(study_of(tmp_path))
    assert len(seen) == len(set(seen)) == 6, seen


@pytest.mark.slow
def test_two_sweeps_started_together_never_repeat(tmp_path: Path) -> None:
    # the study (and its schema) exists first: two processes creating one SQLite schema
    # at once is another race; MLflow off for the same reason
    optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path}/o.db")
    cmd = command(tmp_path, "mlflow.enabled=false", n=8)  # zero-cost trials: enough for both
    procs = [subprocess.Popen(cmd + [f"hydra.sweep.dir={tmp_path}/sweep{i}"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    s = study_of(tmp_path)
    seen = configurations(s)
    assert len(seen) == len(set(seen)) >= 8, seen
    assert len({t.user_attrs["sweeper_pid"] for t in s.trials}) == 2


@pytest.mark.slow
def test_a_covered_space_stops_the_sweep_cleanly(tmp_path: Path) -> None:
    fixed = ["lora.alpha=16", "optimizer.lr=1e-3", "train.grad_accumulation=1"]  # these win
    out = harness.run(command(tmp_path, *fixed, "lora.rank=choice(4,8)", "mlflow.enabled=false",
                              n=3))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "all 2 configurations of the search space have run" in out.stdout + out.stderr
    s = study_of(tmp_path)
    assert len(s.trials) == 2 and sorted(t.params["lora.rank"] for t in s.trials) == [4, 8]


def test_processes_that_count_together_never_exceed_n_trials(tmp_path: Path) -> None:
    """Six processes count 0 of 3 trials taken at the same moment, then all ask: the
    three with the lowest numbers run, the others are told FAIL as never run (CI saw 5
    finished trials of 4 with 3 sweeps before the count after ``ask``)."""
    space = parse_search_space(LORA)
    sweepers = [open_sweeper(tmp_path, "random") for _ in range(6)]
    ran_numbers, not_run = [], []

    def work(impl: SweeperImpl, study: optuna.Study) -> None:
        try:
            ran_numbers.append(impl.proposer.propose(study, space, limit=3).number)
        except _proposals.QuotaReached:
            not_run.append(1)

    together(sweepers, work)
    study = sweepers[0][1]
    assert sorted(ran_numbers) == [0, 1, 2] and len(not_run) == 3
    left = study.get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in left] == [3, 4, 5]
    assert all(not _proposals.ran(t) and "n_trials=3" in t.user_attrs["fail_reason"]
               for t in left)
    # a trial that failed frees its place; one that is finished does not
    tell_fail(study, ran_numbers[0], None)
    assert impl_number(sweepers[0], space, 3) == 6
    with pytest.raises(_proposals.QuotaReached):
        sweepers[1][0].proposer.propose(sweepers[1][1], space, limit=3)


def impl_number(pair: Tuple[SweeperImpl, optuna.Study], space: SearchSpace, limit: int) -> int:
    return pair[0].proposer.propose(pair[1], space, limit=limit).number
