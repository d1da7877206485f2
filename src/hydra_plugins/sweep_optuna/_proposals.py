"""The proposal step of the sweep: a new trial that repeats no other trial's configuration.

Trial n is drawn after trials 0..n-1 have their params, by a sampler seeded from (seed, n),
and redrawn if it still matches one of them; so resumes and parallel workers neither
restart nor share a random stream, and a given seed and study history give the same
proposals. Draws are not recorded until one is new: a recorded repeat would cost a junk
FAIL trial per redraw.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import random
import socket
import time
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

import optuna
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.trial import TrialState

from sweep.study._compat import draw_unrecorded, enqueued_params, suggesting
from sweep.study.trials import (COPIED_ATTR, TAKEN, frozen_trial, owner_died, ran, retried,
                                tell_fail, tell_not_run)

from hydra_plugins.sweep_optuna._custom_space import custom_overrides
from hydra_plugins.sweep_optuna._errors import SweepAborted
from hydra_plugins.sweep_optuna._search_space import SearchSpace, grid_values, hydra_value

__all__ = ["SweepAborted", "SpaceExhausted", "QuotaReached", "Proposer", "build_sampler",
           "trial_seed", "suggest", "config_key", "finite_points", "hydra_value", "MAX_DRAWS",
           "MAX_POINTS", "EARLIER_TRIALS_WAIT", "PROPOSAL_ATTR", "DERIVED_ATTR",
           "custom_overrides"]

log = logging.getLogger("sweep.sweeper")

MAX_DRAWS = 20  # draws of one trial before taking a free point of a discrete space at random
MAX_POINTS = 100_000  # larger discrete spaces are not listed
EARLIER_TRIALS_WAIT = 30.0  # seconds a trial waits for the params of the trials before it
WAIT_FIRST, WAIT_MOST = 0.05, 0.5  # seconds between its looks: the first, the longest
PROPOSAL_ATTR = "proposal_seconds"  # user attr: {"ask": study.ask(), "total": to params}
DERIVED_ATTR = "derived"  # user attr: {key: value} of the ratio() keys


class SpaceExhausted(Exception):
    """Every configuration of a discrete search space has run or is running."""


class QuotaReached(Exception):
    """Other processes took the last of ``n_trials`` between our count and our ask."""


def build_sampler(name: str, kwargs: Dict[str, Any], seed: int, space: SearchSpace,
                  multi_objective: bool, draw_seed: Optional[int] = None
                  ) -> optuna.samplers.BaseSampler:
    """The sampler named in ``hydra.sweeper.sampler``. ``draw_seed`` (see ``trial_seed``)
    reseeds the random draws of one trial; grid and QMC keep ``seed`` whatever it is: it
    orders the grid (trial n takes point n) and scrambles the QMC sequence (its position
    is kept in the study), which every process must share. QMC's fallback sampler, used
    for the first trial, is reseeded."""
    own = seed if draw_seed is None else draw_seed
    fallback = {} if draw_seed is None else {
        "independent_sampler": optuna.samplers.RandomSampler(seed=draw_seed)}
    samplers = {
        # constant_liar (already Optuna 5's default): running trials count as bad ones
        "tpe": lambda: optuna.samplers.TPESampler(seed=own, **{"constant_liar": True, **kwargs}),
        "random": lambda: optuna.samplers.RandomSampler(seed=own, **kwargs),
        "grid": lambda: optuna.samplers.GridSampler(grid_values(space), seed=seed, **kwargs),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=own, **kwargs),
        "gp": lambda: optuna.samplers.GPSampler(seed=own, **kwargs),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, **{**fallback, **kwargs}),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=own, **kwargs),
    }
    if name not in samplers:
        raise SweepAborted(f"hydra.sweeper.sampler={name}: choose from {sorted(samplers)}")
    if name == "gp":
        try:
            import torch  # noqa: F401
        except ImportError:
            raise SweepAborted("hydra.sweeper.sampler=gp needs PyTorch (pip install torch); "
                               "tpe, random, grid, cmaes, qmc and nsga2 do not") from None
    if name == "cmaes" and multi_objective:
        raise SweepAborted("hydra.sweeper.sampler=cmaes is single-objective; use nsga2 or tpe")
    return construct(samplers[name], "hydra.sweeper.sampler_kwargs", kwargs)


def construct(factory, key: str, kwargs: Mapping[str, Any]):
    """``factory()``, with a misspelt or mistyped keyword in ``kwargs`` as one line naming
    ``key`` (Optuna raises a bare TypeError)."""
    try:
        return factory()
    except TypeError as error:
        if kwargs and ("keyword argument" in str(error) or "argument" in str(error)):
            raise SweepAborted(f"{key}={dict(kwargs)}: {error}") from None
        raise


def trial_seed(seed: int, number: int, attempt: int = 0) -> int:
    """The sampler seed of one draw of trial ``number``: the same in every process."""
    digest = hashlib.sha256(f"{seed}/{number}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def suggest(trial: optuna.trial.Trial, name: str, distribution: BaseDistribution) -> Any:
    """``trial.suggest_*`` for one Optuna distribution of the search space."""
    d = distribution
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    raise TypeError(f"{name}: cannot suggest from {d!r}")


def config_key(params: Mapping[str, Any]) -> Tuple:
    """A configuration as an exact, hashable key: floats exactly, and 1, 1.0, True apart."""
    return tuple(sorted((k, type(v).__name__, v) for k, v in params.items()))


def _values(d: BaseDistribution) -> Optional[List[Any]]:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, IntDistribution):
        return list(range(d.low, d.high + 1, d.step))
    if isinstance(d, FloatDistribution) and d.step is not None:
        return [d.low + i * d.step for i in range(int(round((d.high - d.low) / d.step)) + 1)]
    return None


def finite_points(distributions: Mapping[str, BaseDistribution]) -> Optional[List[Dict[str, Any]]]:
    """Every configuration of a discrete search space; None if it is continuous or huge."""
    values = {k: _values(d) for k, d in distributions.items()}
    if any(v is None for v in values.values()) or \
            math.prod(len(v) for v in values.values()) > MAX_POINTS:
        return None
    return [dict(zip(values, combo)) for combo in itertools.product(*values.values())]


class Proposer:
    """New trials of one sweep: its sampler settings and seed, the same in every process."""

    def __init__(self, sampler: str, sampler_kwargs: Mapping[str, Any], seed: int,
                 multi_objective: bool):
        self.name, self.kwargs = sampler, dict(sampler_kwargs)
        self.seed, self.multi_objective = seed, multi_objective

    def sampler(self, space: SearchSpace, draw_seed: Optional[int] = None
                ) -> optuna.samplers.BaseSampler:
        """The study's sampler, or (with ``draw_seed``) the one of a single draw."""
        return build_sampler(self.name, self.kwargs, self.seed, space, self.multi_objective,
                             draw_seed)

    def propose(self, study: optuna.Study, space: SearchSpace,
                limit: Optional[int] = None) -> optuna.trial.Trial:
        """A new RUNNING trial whose params no COMPLETE, PRUNED, RUNNING or WAITING trial
        of the study has; raises SpaceExhausted if a discrete space has none left, and
        QuotaReached if ``limit`` trials numbered before it are finished or running.

        Counting before ``ask`` is not enough: processes that count at the same moment
        all ask. Trial numbers are unique and ordered, so each process then counts the
        taken trials numbered before its own; only those under ``limit`` run, so the
        study never gets more than ``limit`` finished trials, whatever the races."""
        points = finite_points(space.distributions)
        if points is not None and not {config_key(p) for p in points} - self._taken(study, -1):
            raise SpaceExhausted(f"all {len(points)} configurations of the search space "
                                 "have run or are running")
        asked = time.perf_counter()
        trial = study.ask()  # its number first: the draw's seed depends on it
        ask_seconds = time.perf_counter() - asked
        trial.set_user_attr("sweeper_host", socket.gethostname())
        trial.set_user_attr("sweeper_pid", os.getpid())
        if limit is not None:
            ahead = sum(1 for t in study.get_trials(deepcopy=False, states=TAKEN)
                        if t.number < trial.number and ran(t))
            if ahead >= limit:
                tell_not_run(study, trial, f"not run: {ahead} trials before it took "
                                           f"hydra.sweeper.n_trials={limit}")
                raise QuotaReached(f"{ahead} trials before trial {trial.number} took them")
        retry = frozen_trial(study, trial.number)
        try:
            if retried(retry) is not None:  # a stopped trial's retry: its params, to resume
                params = dict(retry.params)
            else:
                self._wait_for_earlier(study, trial.number)
                # an enqueued trial (warm start, study.enqueue_trial) keeps its values
                queued = {k: v for k, v in enqueued_params(retry).items()
                          if k in space.distributions}
                if len(queued) == len(space.distributions):
                    params = queued
                else:
                    params = self._draw_new(study, space, trial.number, points)
                    if params is not None:
                        params.update(queued)
        except BaseException as error:  # never leave an asked trial RUNNING
            tell_fail(study, trial, f"no proposal: {type(error).__name__}: {error}")
            raise
        if params is None:  # a race with another process for the last points
            tell_not_run(study, trial, "not run: search space exhausted")
            raise SpaceExhausted("another process took the last configurations")
        try:
            # no sampler hook runs on these calls; what custom_search_space suggests beyond
            # them is drawn by a sampler seeded for this trial (a retry gets its own back)
            with suggesting(study, params, fallback=self.sampler(
                    space, trial_seed(self.seed, trial.number, MAX_DRAWS + 1))):
                for name, distribution in space.distributions.items():
                    suggest(trial, name, distribution)
                extra = custom_overrides(space, trial)
            derived = space.derived_values(trial.params)
            overrides = space.overrides(trial.params, extra)
        except BaseException as error:
            tell_fail(study, trial, f"no proposal: {type(error).__name__}: {error}")
            raise
        if derived:
            trial.set_user_attr(DERIVED_ATTR, derived)
        trial.set_user_attr(PROPOSAL_ATTR, {"ask": round(ask_seconds, 6), "total": round(
            time.perf_counter() - asked, 6)})  # seconds (bench/load.py reads them)
        trial.set_user_attr("overrides", overrides)  # the proposal is complete
        return trial

    def _wait_for_earlier(self, study: optuna.Study, number: int) -> None:
        """Until every earlier trial has all its params: trial n is drawn after trials
        0..n-1, so it can avoid them all, whichever process proposes them."""
        host, deadline = socket.gethostname(), time.monotonic() + EARLIER_TRIALS_WAIT
        pause = WAIT_FIRST
        while True:
            pending = [t.number for t in study.get_trials(deepcopy=False,
                                                         states=(TrialState.RUNNING,))
                       if t.number < number and "overrides" not in t.user_attrs
                       and not owner_died(t, host)]
            if not pending:
                return
            if time.monotonic() > deadline:
                log.warning("trial %d: trials %s still have no params after %.0f s; drawing "
                            "without them", number, pending, EARLIER_TRIALS_WAIT)
                return
            time.sleep(pause)  # backing off: each look reads the study's running trials,
            pause = min(pause * 1.5, WAIT_MOST)  # and 32 workers looking every 50 ms
            # kept the gRPC proxy busy (101 CPU-s for 96 trials, bench/load.py)

    def _taken(self, study: optuna.Study, number: int) -> Set[Tuple]:
        """The configurations a new trial must not repeat: not those warm start copied from
        another study (evidence for the sampler; their best may be worth training here)."""
        return {config_key(enqueued_params(t)) for t in study.get_trials(deepcopy=False, states=TAKEN)
                if t.number != number and COPIED_ATTR not in t.user_attrs}

    def _draw_new(self, study: optuna.Study, space: SearchSpace, number: int,
                  points: Optional[List[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
        """Draws of a sampler seeded from (seed, number, attempt) until one is new; after
        MAX_DRAWS, a free point of a discrete space, picked with the same kind of seed."""
        taken = self._taken(study, number)
        trial = frozen_trial(study, number)  # with what ask() stored (GridSampler: its grid_id)
        for attempt in range(MAX_DRAWS):
            sampler = self.sampler(space, trial_seed(self.seed, number, attempt))
            params = draw_unrecorded(sampler, study, trial, space.distributions)
            if config_key(params) not in taken:
                if attempt:
                    log.info("trial %d: %d draw(s) repeated earlier trials", number, attempt)
                return params
        free = [p for p in points or [] if config_key(p) not in taken]
        if free:
            log.info("trial %d: %d draws repeated earlier trials; taking one of the %d free "
                     "configurations", number, MAX_DRAWS, len(free))
            return random.Random(trial_seed(self.seed, number, MAX_DRAWS)).choice(free)
        if points is None:
            raise SweepAborted(f"trial {number}: {MAX_DRAWS} draws of hydra.sweeper.sampler="
                               f"{self.name} all repeated earlier trials")
        return None
