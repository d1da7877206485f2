"""The ask -> launch -> reconcile loop behind ``SweepOptunaSweeper``.

Each worker (this process, the extra processes it may start, or the same command run
elsewhere against the same storage) asks Optuna for one trial at a time and launches
it as soon as it is free: no blocking batches. ``n_trials`` counts the finished trials
of the whole study, so re-running the command resumes it. The job tells Optuna how its
trial ended (``sweep.study.link``); a trial whose job died is set to FAIL here. What
happens to the winner afterwards (held-out evaluation, registration) are Hydra callbacks
(``sweep.cli.callbacks``), run when this loop has returned.

No trial repeats another's configuration: proposals come from ``_proposals.Proposer``,
which this loop builds and calls but which knows nothing of launching.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from sweep.study._compat import job_error
from sweep.testing.faults import point
from sweep.study import EVALUATED_ATTR, WORKER_ENV
from sweep.study.locks import study_lock
from sweep.study.objectives import direction, parse_constraint
from sweep.study.link import GRACE_ATTR, HEARTBEAT_ATTR, PRUNER_ATTR, build_pruner

from sweep.study.trials import (frozen_trial, owner_died, ran, retry_stopped,
                                tell_fail)

from hydra_plugins.sweep_optuna._proposals import (Proposer, QuotaReached, SpaceExhausted,
                                                   SweepAborted, build_sampler, hydra_value)
from hydra_plugins.sweep_optuna._custom_space import load_custom
from hydra_plugins.sweep_optuna._search_space import (SearchSpace, SearchSpaceError,
                                                      parse_search_space, resolve_bases)
from hydra_plugins.sweep_optuna._checks import (check_budget_fits, check_failure_rate,
                                                check_space_fits, refuse_secrets)
from hydra_plugins.sweep_optuna._terminate import check_terminate, terminated
from hydra_plugins.sweep_optuna._warm_start import start as warm_start
from hydra_plugins.sweep_optuna._storage import (fail_stale, lost_message, open_storage,
                                                 storage_lost)

# SweepAborted, build_sampler and hydra_value live in _proposals; callers may import them here
__all__ = ["SweeperImpl", "SweepAborted", "build_sampler", "hydra_value", "plain", "WORKER_ENV",
           "EVALUATED_ATTR"]

log = logging.getLogger("sweep.sweeper")

# Heartbeats are used with ask/tell on purpose (the job beats from its own thread).
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental")
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
warnings.filterwarnings("ignore", message=".*fail_stale_trials is experimental")

WAIT_POLL = 2.0  # seconds between looks at other processes' running trials
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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


class SweeperImpl:
    def __init__(self, settings: Mapping[str, Any]):
        self.settings: Dict[str, Any] = plain(dict(settings))
        self.config: Optional[DictConfig] = None
        self.launcher = None
        self.hydra_context: Optional[HydraContext] = None
        self.proposer: Optional[Proposer] = None  # set by open_study (it needs the seed)
        self._first_trial = 0  # the first trial number this run started (failure rate)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # -- the study ---------------------------------------------------------------
    def _storage(self) -> optuna.storages.BaseStorage:
        return open_storage(str(self.settings["storage"]), int(self.settings["heartbeat_interval"]),
                            int(self.settings["grace_period"]))

    def _objectives(self) -> List[str]:
        return list(self.settings["objectives"])

    def open_study(self, space: SearchSpace) -> optuna.Study:
        s = self.settings
        seed = s["seed"] if s["seed"] is not None else int(self.config.get("seed", 0))
        objectives = self._objectives()
        self.proposer = Proposer(s["sampler"], dict(s["sampler_kwargs"] or {}), seed,
                                 len(objectives) > 1)
        sampler = self.proposer.sampler(space)
        pruner_spec = {"name": s["pruner"], "kwargs": dict(s["pruner_kwargs"] or {})}
        try:
            pruner = build_pruner(pruner_spec["name"], pruner_spec["kwargs"])
        except (ValueError, TypeError) as error:
            raise SweepAborted(f"hydra.sweeper.pruner: {error}") from None
        storage, name = self._storage(), str(s["study_name"])
        self.storage = storage
        try:  # exactly one of the processes started together makes it (a unique name)
            study = optuna.create_study(storage=storage, study_name=name, sampler=sampler,
                                        pruner=pruner,
                                        directions=[direction(o) for o in objectives])
            self.created_study = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(storage=storage, study_name=name, sampler=sampler,
                                      pruner=pruner)
            self.created_study = False
        if [d.name.lower() for d in study.directions] != [direction(o) for o in objectives]:
            raise SweepAborted(
                f"study '{study.study_name}' has {len(study.directions)} objective(s) "
                f"({', '.join(d.name.lower() for d in study.directions)}), hydra.sweeper."
                f"objectives={objectives}: another measure; use another study_name")
        study.set_user_attr("objectives", objectives)
        study.set_user_attr(PRUNER_ATTR, pruner_spec)
        study.set_user_attr(HEARTBEAT_ATTR, int(s["heartbeat_interval"]))
        study.set_user_attr(GRACE_ATTR, int(s["grace_period"]))
        return study

    def fail_dead_trials(self, study: optuna.Study) -> List[int]:
        """RUNNING trials of dead processes on this host -> FAIL (and their MLflow runs);
        stopped trials with a checkpoint -> a retry that resumes from it."""
        host = socket.gethostname()
        failed = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if owner_died(t, host):
                tell_fail(study, t.number)
                failed.append(t.number)
        if failed:
            log.warning("Trials %s were left RUNNING by a process that died: now FAIL", failed)
        fail_stale(study, self.storage, int(self.settings["grace_period"]))  # silent ones, any host
        if int(self.settings.get("max_retry", 0)) > 0:
            again = retry_stopped(study, int(self.settings["max_retry"]))
            if again:
                log.info("Trials %s stopped after a checkpoint: each goes on from it as a new "
                         "trial", again)
        return failed

    def propose(self, study: optuna.Study, space: SearchSpace) -> optuna.trial.Trial:
        """The next trial, with its params (``Proposer.propose``); after ``open_study``."""
        return self.proposer.propose(study, space)

    # -- one trial ---------------------------------------------------------------
    def _link_overrides(self, study: optuna.Study, number: int, parent: Optional[str]) -> List[str]:
        objectives = ",".join(self._objectives())
        out = [f"trial.storage={hydra_value(str(self.settings['storage']))}",
               f"trial.study_name={hydra_value(study.study_name)}",
               f"trial.number={number}",
               f"trial.objectives=[{objectives}]"]
        out += [f"+trial.constraints.{k}={hydra_value(str(v))}"  # a typed dict: + adds a key
                for k, v in (self.settings.get("constraints") or {}).items()]
        if parent:
            out.append(f"trial.parent_run_id={hydra_value(parent)}")
        return out

    def run_one(self, study: optuna.Study, space: SearchSpace, parent: Optional[str]) -> Any:
        trial = self.proposer.propose(study, space, limit=int(self.settings["n_trials"]))
        chosen = list(frozen_trial(study, trial.number).user_attrs["overrides"])
        overrides = chosen + self._link_overrides(study, trial.number, parent)
        log.info("trial %d: %s", trial.number, " ".join(chosen[len(space.fixed):]))
        try:
            self.validate(overrides)
            result = self.launcher.launch([overrides], initial_job_idx=trial.number)[0]
        except Exception as error:  # composition, or the launcher's job process died:
            tell_fail(study, trial, f"{type(error).__name__}: {error}")  # the sweep goes on
            log.error("trial %d failed in its launcher: %s", trial.number, error)
            return None
        except BaseException as stop:  # SIGTERM / Ctrl-C: a launcher's job process (joblib)
            if frozen_trial(study, trial.number).state == TrialState.RUNNING:  # is killed
                tell_fail(study, trial, f"stopped: {stop or type(stop).__name__}")  # untold
            raise
        frozen = frozen_trial(study, trial.number)
        if frozen.state == TrialState.RUNNING:  # the job died before telling
            reason = job_error(result) if result.status == JobStatus.FAILED else "no result"
            tell_fail(study, trial, str(reason))
            frozen = frozen_trial(study, trial.number)
        self._log_outcome(study, frozen)
        return result

    def validate(self, overrides: List[str]) -> None:
        self.hydra_context.config_loader.load_sweep_config(
            master_config=self.config, sweep_overrides=list(overrides))

    def _log_outcome(self, study: optuna.Study, t: FrozenTrial) -> None:
        done = sum(map(ran, study.get_trials(deepcopy=False, states=FINISHED)))
        value = ", ".join(f"{v:.4f}" for v in t.values) if t.values else "-"
        reason = t.user_attrs.get("fail_reason", "") if t.state == TrialState.FAIL else ""
        log.info("trial %d %s (%s)%s  [%d/%d finished]", t.number, t.state.name, value,
                 f": {reason}" if reason else "", done, int(self.settings["n_trials"]))

    # -- the loop ----------------------------------------------------------------
    def _start_workers(self) -> List[subprocess.Popen]:
        n = int(self.settings["n_workers"])
        if n <= 1 or os.environ.get(WORKER_ENV):
            return []
        argv = [sys.executable, *sys.orig_argv[1:]]
        log.info("Starting %d more worker process(es) on this study", n - 1)
        return [subprocess.Popen(argv, env={**os.environ, WORKER_ENV: str(i)})
                for i in range(1, n)]

    def sweep(self, arguments: List[str]) -> Any:
        from hydra_plugins.sweep_optuna._parent_run import StudyReport, check_tracking

        try:
            space = parse_search_space(dict(self.settings["params"] or {}), arguments)
            resolve_bases(space, self.config)
        except SearchSpaceError as error:
            raise SweepAborted(f"hydra.sweeper.params: {error}") from None
        space.custom = load_custom(self.settings.get("custom_search_space"), self.config)
        if not space.distributions:
            raise SweepAborted("hydra.sweeper.params is empty: nothing to search")
        for key in ("n_trials", "n_workers"):
            if int(self.settings[key]) < 1:
                raise SweepAborted(f"hydra.sweeper.{key}={self.settings[key]}: must be >= 1")
        check_terminate(self.settings, len(self._objectives()))
        for name, bound in (self.settings.get("constraints") or {}).items():
            try:
                parse_constraint(name, bound)
            except ValueError as error:
                raise SweepAborted(f"hydra.sweeper.constraints.{error}") from None
        refuse_secrets(self.settings, self.config)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        check_tracking(self.config)
        study = self.open_study(space)
        try:
            check_space_fits(study, space)
            check_budget_fits(study, space)
        except SearchSpaceError as error:
            raise SweepAborted(str(error)) from None
        self.fail_dead_trials(study)
        warm_start(study, self.storage, space, self.settings, self.config)
        self._first_trial = len(study.get_trials(deepcopy=False))  # this run's trials start here
        report = StudyReport(study, self.config, self.settings, space)
        parent = report.open_parent_run(created=self.created_study)
        workers = self._start_workers()
        n_trials = int(self.settings["n_trials"])
        results = []
        try:
            while True:
                self.fail_dead_trials(study)  # of this host's dead processes, or silent
                finished = sum(map(ran, study.get_trials(deepcopy=False, states=FINISHED)))
                running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
                if finished + running >= n_trials:
                    if not running or os.environ.get(WORKER_ENV):
                        break
                    time.sleep(WAIT_POLL)  # others' trials (workers, other machines): if
                    continue               # one fails, this process runs another
                check_failure_rate(study, self.settings, self._first_trial)
                if terminated(study, self.settings, self._objectives()[0]):
                    break
                point("between_trials")
                try:
                    results.append(self.run_one(study, space, parent))
                except QuotaReached as done:  # the loop's count decides
                    log.info("trial not run: %s", done)
                    continue
                except SpaceExhausted as done:
                    log.info("Stopping: %s (hydra.sweeper.n_trials=%d cannot be reached "
                             "without repeating one)", done, n_trials)
                    break
            for worker in workers:
                if worker.wait() != 0:
                    log.warning("worker process %d exited with status %d", worker.pid,
                                worker.returncode)
        except BaseException as error:
            lost = storage_lost(error)
            try:
                report.close_parent_run("FAILED" if not isinstance(error, KeyboardInterrupt)
                                        else "KILLED", study_readable=lost is None)
            except Exception as also:  # noqa: BLE001  (the error above is the one to show)
                log.warning("could not close the study's MLflow run: %s", also)
            for worker in workers:
                worker.terminate()
            if lost is not None:
                raise SweepAborted(lost_message(str(self.settings["storage"]), lost)) from None
            raise
        if not os.environ.get(WORKER_ENV):  # sweeps ending together: one after the other
            with study_lock(str(self.settings["storage"]), study.study_name):
                report.finish()  # the winner's evaluation and registration: sweep.cli.callbacks
        return results
