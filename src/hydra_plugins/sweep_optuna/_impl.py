"""The ask -> launch -> reconcile loop behind ``SweepOptunaSweeper``.

Each worker (this process, the extra processes it may start, or the same command run
elsewhere against the same storage) asks Optuna for one trial at a time and launches
it as soon as it is free: no blocking batches. ``n_trials`` counts the finished trials
of the whole study, so re-running the command resumes it. The job tells Optuna how its
trial ended (``sweep.optuna_link``); a trial whose job died is set to FAIL here.

No trial repeats another's configuration (``SweeperImpl.propose``): trial n is drawn
after trials 0..n-1 have their params, by a sampler seeded from (seed, n), and redrawn
if it still matches one of them; so resumes and parallel workers neither restart nor
share a random stream, and a given seed and study history give the same proposals.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import random
import socket
import subprocess
import sys
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,
                                  IntDistribution)
from optuna.trial import FrozenTrial, TrialState

from sweep.optuna_link import HEARTBEAT_ATTR, PRUNER_ATTR, build_pruner
from sweep.paths import ensure_sqlite_folder

from hydra_plugins.sweep_optuna._search_space import (SearchSpace, SearchSpaceError, grid_values,
                                                      parse_search_space)

log = logging.getLogger("sweep.sweeper")

# Heartbeats are used with ask/tell on purpose (the job beats from its own thread).
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental")
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental")

WORKER_ENV = "SWEEP_OPTUNA_WORKER"
EVALUATED_ATTR = "evaluated_trial"  # study user attr: the best trial evaluated on the test split
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
TAKEN = FINISHED + (TrialState.RUNNING, TrialState.WAITING)  # a FAILed configuration may rerun
MAX_DRAWS = 20  # draws of one trial before taking a free point of a discrete space at random
MAX_POINTS = 100_000  # larger discrete spaces are not listed
EARLIER_TRIALS_WAIT = 30.0  # seconds a trial waits for the params of the trials before it


class SweepAborted(RuntimeError):
    """The sweep stopped on purpose (too many failures, a bad search space)."""


class SpaceExhausted(Exception):
    """Every configuration of a discrete search space has run or is running."""


def plain(value: Any) -> Any:
    """Settings as Hydra passes them (DictConfig, Enum members) as plain Python values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


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
    return samplers[name]()


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


def draw(sampler: optuna.samplers.BaseSampler, study: optuna.Study, trial: FrozenTrial,
         distributions: Mapping[str, BaseDistribution]) -> Dict[str, Any]:
    """One candidate configuration for ``trial``, asked of ``sampler`` the way
    ``Trial.suggest_*`` asks it (relative sampling first, then independent) but not
    recorded, so that a repeat can be drawn again. (Suggesting instead would record the
    repeat for good: a redraw would then cost a junk FAIL trial.) Unlike ``Trial``, the
    sampler sees the whole study, not the HyperbandPruner's bracket."""
    relative_space = sampler.infer_relative_search_space(study, trial)
    relative = sampler.sample_relative(study, trial, relative_space)
    params = {}
    for name, d in distributions.items():
        if d.single():
            value = d.choices[0] if isinstance(d, CategoricalDistribution) else d.low
        elif name in relative and name in relative_space:
            value = relative[name]
        else:
            value = sampler.sample_independent(study, trial, name, d)
        params[name] = d.to_external_repr(d.to_internal_repr(value))  # numpy -> Python types
    return params


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


class _Chosen(optuna.samplers.BaseSampler):
    """Gives ``trial.suggest_*`` the values already drawn, so they are recorded as usual."""

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.params[param_name]


@contextlib.contextmanager
def _sampler(study: optuna.Study, sampler: optuna.samplers.BaseSampler) -> Iterator[None]:
    saved, study.sampler = study.sampler, sampler
    try:
        yield
    finally:
        study.sampler = saved


def hydra_value(value: Any) -> str:
    """A sampled value written so that Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return text if text.replace("_", "").replace("-", "").replace(".", "").isalnum() \
        else "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _owner_died(t: FrozenTrial, host: str) -> bool:
    """The trial's job or sweeper process was on this host and is gone."""
    owner_pid = t.user_attrs.get("pid", t.user_attrs.get("sweeper_pid"))
    owner_host = t.user_attrs.get("host", t.user_attrs.get("sweeper_host"))
    return owner_host == host and not _pid_alive(owner_pid)


def _trial(study: optuna.Study, number: int) -> FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _params(t: FrozenTrial) -> Dict[str, Any]:
    """A trial's configuration; an enqueued (WAITING) trial's is still in its system attrs."""
    return t.params or dict(t.system_attrs.get("fixed_params") or {})


class SweeperImpl:
    def __init__(self, settings: Mapping[str, Any]):
        self.settings: Dict[str, Any] = plain(dict(settings))
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None
        self.seed = 0  # the study's sampler seed, set by open_study

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -- the study ---------------------------------------------------------------
    def _storage(self) -> optuna.storages.RDBStorage:
        url = str(self.settings["storage"])
        ensure_sqlite_folder(url)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=int(self.settings["heartbeat_interval"]),
            grace_period=int(self.settings["grace_period"]))

    def _objectives(self) -> List[str]:
        return list(self.settings["objectives"])

    def open_study(self, space: SearchSpace) -> optuna.Study:
        s = self.settings
        self.seed = s["seed"] if s["seed"] is not None else int(self.config.get("seed", 0))
        objectives = self._objectives()
        sampler = self._sampler(space)
        pruner_spec = {"name": s["pruner"], "kwargs": dict(s["pruner_kwargs"] or {})}
        try:
            pruner = build_pruner(pruner_spec["name"], pruner_spec["kwargs"])
        except (ValueError, TypeError) as error:
            raise SweepAborted(f"hydra.sweeper.pruner: {error}") from None
        study = optuna.create_study(
            storage=self._storage(), study_name=str(s["study_name"]), sampler=sampler,
            pruner=pruner, directions=["minimize"] * len(objectives), load_if_exists=True)
        if len(study.directions) != len(objectives):
            raise SweepAborted(
                f"study '{study.study_name}' has {len(study.directions)} objective(s), "
                f"hydra.sweeper.objectives has {len(objectives)}; use another study_name")
        study.set_user_attr("objectives", objectives)
        study.set_user_attr(PRUNER_ATTR, pruner_spec)
        study.set_user_attr(HEARTBEAT_ATTR, int(s["heartbeat_interval"]))
        return study

    def _sampler(self, space: SearchSpace, draw_seed: Optional[int] = None
                 ) -> optuna.samplers.BaseSampler:
        s = self.settings
        return build_sampler(s["sampler"], dict(s["sampler_kwargs"] or {}), self.seed, space,
                             len(self._objectives()) > 1, draw_seed)

    def fail_dead_trials(self, study: optuna.Study) -> List[int]:
        """RUNNING trials of dead processes on this host -> FAIL (and their MLflow runs)."""
        host = socket.gethostname()
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _owner_died(t, host):
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                failed.append(t.number)
        failed += optuna.storages.fail_stale_trials(study) or []
        if failed:
            log.warning("Trials %s were left RUNNING by a process that died: now FAIL", failed)
        return failed

    # -- one proposal ------------------------------------------------------------
    def propose(self, study: optuna.Study, space: SearchSpace) -> optuna.trial.Trial:
        """A new RUNNING trial whose params no COMPLETE, PRUNED, RUNNING or WAITING trial
        of the study has; raises SpaceExhausted if a discrete space has none left."""
        points = finite_points(space.distributions)
        if points is not None and not {config_key(p) for p in points} - self._taken(study, -1):
            raise SpaceExhausted(f"all {len(points)} configurations of the search space "
                                 "have run or are running")
        trial = study.ask()  # its number first: the draw's seed depends on it
        trial.set_user_attr("sweeper_host", socket.gethostname())
        trial.set_user_attr("sweeper_pid", os.getpid())
        self._wait_for_earlier(study, trial.number)
        params = self._draw_new(study, space, trial.number, points)
        with _sampler(study, _Chosen(params or {})):  # no sampler hook runs on these calls
            if params is None:  # a race with another process for the last points
                trial.set_user_attr("fail_reason", "search space exhausted")
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
                raise SpaceExhausted("another process took the last configurations")
            for name, distribution in space.distributions.items():
                suggest(trial, name, distribution)
        chosen = [f"{k}={hydra_value(v)}" for k, v in trial.params.items()]
        trial.set_user_attr("overrides", space.fixed + chosen)  # the proposal is complete
        return trial

    def _wait_for_earlier(self, study: optuna.Study, number: int) -> None:
        """Until every earlier trial has all its params: trial n is drawn after trials
        0..n-1, so it can avoid them all, whichever process proposes them."""
        host, deadline = socket.gethostname(), time.monotonic() + EARLIER_TRIALS_WAIT
        while True:
            pending = [t.number for t in study.get_trials(deepcopy=False,
                                                         states=(TrialState.RUNNING,))
                       if t.number < number and "overrides" not in t.user_attrs
                       and not _owner_died(t, host)]
            if not pending:
                return
            if time.monotonic() > deadline:
                log.warning("trial %d: trials %s still have no params after %.0f s; drawing "
                            "without them", number, pending, EARLIER_TRIALS_WAIT)
                return
            time.sleep(0.05)

    def _taken(self, study: optuna.Study, number: int) -> Set[Tuple]:
        return {config_key(_params(t)) for t in study.get_trials(deepcopy=False, states=TAKEN)
                if t.number != number}

    def _draw_new(self, study: optuna.Study, space: SearchSpace, number: int,
                  points: Optional[List[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
        """Draws of a sampler seeded from (seed, number, attempt) until one is new; after
        MAX_DRAWS, a free point of a discrete space, picked with the same kind of seed."""
        taken = self._taken(study, number)
        trial = _trial(study, number)  # with what ask() stored (GridSampler: its grid_id)
        for attempt in range(MAX_DRAWS):
            sampler = self._sampler(space, trial_seed(self.seed, number, attempt))
            params = draw(sampler, study, trial, space.distributions)
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
                               f"{self.settings['sampler']} all repeated earlier trials")
        return None

    # -- one trial ---------------------------------------------------------------
    def _link_overrides(self, study: optuna.Study, number: int, parent: Optional[str]) -> List[str]:
        objectives = ",".join(self._objectives())
        out = [f"trial.storage={hydra_value(str(self.settings['storage']))}",
               f"trial.study_name={hydra_value(study.study_name)}",
               f"trial.number={number}",
               f"trial.objectives=[{objectives}]"]
        if parent:
            out.append(f"trial.parent_run_id={hydra_value(parent)}")
        return out

    def run_one(self, study: optuna.Study, space: SearchSpace, parent: Optional[str]) -> Any:
        trial = self.propose(study, space)
        params = [f"{k}={hydra_value(v)}" for k, v in trial.params.items()]
        overrides = space.fixed + params + self._link_overrides(study, trial.number, parent)
        log.info("trial %d: %s", trial.number, " ".join(params))
        try:
            self.validate(overrides)
            result = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        except Exception as error:  # composition errors: this trial FAILs, the sweep goes on
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[:1000])
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            log.error("trial %d could not start: %s", trial.number, error)
            return None
        frozen = _trial(study, trial.number)
        if frozen.state == TrialState.RUNNING:  # the job died before telling
            reason = result._return_value if result.status == JobStatus.FAILED else "no result"
            trial.set_user_attr("fail_reason", f"{reason}"[:1000])
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            frozen = _trial(study, trial.number)
        self._log_outcome(study, frozen)
        return result

    def validate(self, overrides: List[str]) -> None:
        self.hydra_context.config_loader.load_sweep_config(
            master_config=self.config, sweep_overrides=list(overrides))

    def _log_outcome(self, study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        done = len(study.get_trials(deepcopy=False, states=FINISHED))
        value = ", ".join(f"{v:.4f}" for v in t.values) if t.values else "-"
        reason = t.user_attrs.get("fail_reason", "") if t.state == TrialState.FAIL else ""
        log.info("trial %d %s (%s)%s  [%d/%d finished]", t.number, t.state.name, value,
                 f": {reason}" if reason else "", done, int(self.settings["n_trials"]))

    # -- the loop ----------------------------------------------------------------
    def check_failure_rate(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False, states=FINISHED + (TrialState.FAIL,))
        failed = sum(t.state == TrialState.FAIL for t in trials)
        rate, limit = failed / max(len(trials), 1), float(self.settings["max_failure_rate"])
        if len(trials) >= int(self.settings["min_trials_for_failure_rate"]) and rate > limit:
            raise SweepAborted(
                f"{failed} of {len(trials)} trials failed ({rate:.0%} > hydra.sweeper."
                f"max_failure_rate={limit:.0%}); see the fail_reason of the failed trials")

    def _start_workers(self) -> List[subprocess.Popen]:
        n = int(self.settings["n_workers"])
        if n <= 1 or os.environ.get(WORKER_ENV):
            return []
        argv = [sys.executable, *sys.orig_argv[1:]]
        log.info("Starting %d more worker process(es) on this study", n - 1)
        return [subprocess.Popen(argv, env={**os.environ, WORKER_ENV: str(i)})
                for i in range(1, n)]

    def sweep(self, arguments: List[str]) -> Any:
        from hydra_plugins.sweep_optuna._report import StudyReport

        try:
            space = parse_search_space(dict(self.settings["params"] or {}), arguments)
        except SearchSpaceError as error:
            raise SweepAborted(f"hydra.sweeper.params: {error}") from None
        if not space.distributions:
            raise SweepAborted("hydra.sweeper.params is empty: nothing to search")
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        study = self.open_study(space)
        self.fail_dead_trials(study)
        report = StudyReport(study, self.config, self.settings, space)
        parent = report.open_parent_run()
        workers = self._start_workers()
        n_trials = int(self.settings["n_trials"])
        results = []
        try:
            while True:
                finished = len(study.get_trials(deepcopy=False, states=FINISHED))
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if finished + running >= n_trials:
                    break
                self.check_failure_rate(study)
                try:
                    results.append(self.run_one(study, space, parent))
                except SpaceExhausted as done:
                    log.info("Stopping: %s (hydra.sweeper.n_trials=%d cannot be reached "
                             "without repeating one)", done, n_trials)
                    break
            for worker in workers:
                if worker.wait() != 0:
                    log.warning("worker process %d exited with status %d", worker.pid,
                                worker.returncode)
            while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and \
                    not os.environ.get(WORKER_ENV):
                self.fail_dead_trials(study)  # other machines' trials: wait for them
                time.sleep(5)
        except BaseException as error:
            report.close_parent_run("FAILED" if not isinstance(error, KeyboardInterrupt)
                                    else "KILLED")
            for worker in workers:
                worker.terminate()
            raise
        if not os.environ.get(WORKER_ENV):
            report.finish()
            self.evaluate_best(study)
        return results

    def evaluate_best(self, study: optuna.Study) -> None:
        """Held-out evaluation of the best trial (``eval.after_sweep``), once per winner:
        the test split only reports, it chooses nothing."""
        from sweep.errors import SweepError

        if not OmegaConf.select(self.config, "eval.after_sweep", default=False):
            return
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete or len(study.directions) > 1:
            return
        best = study.best_trial
        if study.user_attrs.get(EVALUATED_ATTR) == best.number:
            log.info("best trial %d was evaluated on the test split already", best.number)
            return
        from sweep.evaluation.heldout import evaluate_target, summary

        cfg = self.config.copy()
        with open_dict(cfg):
            cfg.target = best.user_attrs.get("mlflow_run_id") or best.user_attrs.get("output_dir")
            del cfg["hydra"]
        try:
            result = evaluate_target(cfg)
        except (SweepError, OSError) as error:
            log.warning("held-out evaluation of best trial %d failed: %s", best.number, error)
            return
        study.set_user_attr(EVALUATED_ATTR, best.number)
        print(summary(result), flush=True)

