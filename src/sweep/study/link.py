"""The job's side of a sweep: it is an Optuna trial in a shared storage.

The sweeper passes ``trial.storage``, ``trial.study_name`` and ``trial.number`` to each
job. The job reports every validation loss to its trial and stops when the pruner says
so, keeps the trial's heartbeat, and tells Optuna how it ended (COMPLETE, PRUNED or
FAIL) itself, so any Hydra launcher works, in this process or another.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sweep.config.schema import TrialLink
from sweep.errors import TrialFailed, first_line
from sweep.training.events import (CheckpointReport, EvalReport, Listener, TrainReport,
                                   TrialStopped)

__all__ = ["TrialPruned", "OptunaTrialLink", "open_link", "objective_values", "build_pruner",
           "PRUNER_ATTR", "HEARTBEAT_ATTR", "GRACE_ATTR", "HeartbeatLost"]

# Heartbeats are used with ask/tell on purpose (the job beats from its own thread).
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental")
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

PRUNER_ATTR = "pruner"  # study user attr: {"name": ..., "kwargs": {...}}
HEARTBEAT_ATTR = "heartbeat_interval"  # study user attr: seconds (hydra.sweeper.heartbeat_interval)
GRACE_ATTR = "grace_period"  # study user attr: seconds (hydra.sweeper.grace_period)
DEFAULT_GRACE = 120

log = logging.getLogger(__name__)


def build_pruner(name: str, kwargs: Dict[str, Any]):
    """The pruner named in ``hydra.sweeper.pruner``. The sweeper stores its name and
    kwargs in the study, and every job builds the same one: Optuna keeps the pruner in
    the ``Study`` object, not in the storage."""
    import optuna

    from sweep.study.pruning import PairedMedianPruner

    # median: prune from the second trial on (Optuna's default waits for 5). With the
    # short sweeps this tool runs by default (6 trials) every startup trial is a trial
    # that cannot be pruned; replayed on a real 16-point SmolLM2 grid (bench/), 1 startup
    # trial saved 43-48% of the compute of 6-12 TPE trials at the same best val loss,
    # 2 saved 38-39%. Large sweeps: +hydra.sweeper.pruner_kwargs.n_startup_trials=5.
    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(
            **{"n_startup_trials": 1, "n_warmup_steps": 0, **kwargs}),
        "paired_median": lambda: PairedMedianPruner(**{"n_startup_trials": 1, **kwargs}),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**kwargs),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(**kwargs),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    if name not in pruners:
        raise ValueError(f"hydra.sweeper.pruner={name}: choose from {sorted(pruners)}")
    return pruners[name]()


class TrialPruned(TrialStopped):
    """Raised by the pruning listener; the trial ends PRUNED (not FAIL)."""

    state = "PRUNED"


def objective_values(names: Sequence[str], result: Any) -> List[float]:
    """The objective values of a finished trial, in the order of ``names``."""
    from sweep.study.objectives import DIRECTIONS, measures

    table = measures(result)
    unknown = [n for n in names if n not in DIRECTIONS]
    if unknown:
        raise ValueError(f"hydra.sweeper.objectives: unknown {unknown}; choose from "
                         f"{list(DIRECTIONS)}")
    missing = [n for n in names if n not in table]
    if missing:
        raise ValueError(f"hydra.sweeper.objectives: {missing} were not measured (the "
                         "validation answers are off: eval.val_answers=false)")
    return [table[n] for n in names]


class HeartbeatLost(TrialFailed):
    """The job could not beat for longer than the grace period: other workers may have
    failed its trial already, so it stops rather than train on unseen."""


class _Pruning(Listener):
    def __init__(self, link: "OptunaTrialLink"):
        self.link = link

    def on_train_report(self, report: TrainReport) -> None:
        if self.link.lost is not None:
            raise self.link.lost

    def on_eval_report(self, report: EvalReport) -> None:
        if self.link.lost is not None:
            raise self.link.lost
        self.link.report(report)

    def on_checkpoint(self, report: CheckpointReport) -> None:
        from sweep.study.trials import CHECKPOINT_ATTR

        if report.kind != "best":  # the whole training state: a retry resumes from it
            self.link.trial.set_user_attr(CHECKPOINT_ATTR, str(Path(report.path).resolve()))


class OptunaTrialLink:
    def __init__(self, link: TrialLink):
        import optuna

        from sweep.study.storages import is_grpc, open_url
        from sweep.study._compat import has_heartbeat

        if is_grpc(link.storage):  # one channel; beats go into the trial (sweep.study.storages)
            self.storage = open_url(link.storage)
            study_id = self.storage.get_study_id_from_name(link.study_name)
            attrs = self.storage.get_study_user_attrs(study_id)
        else:
            probe = open_url(link.storage, skip_table_creation=True)  # the sweeper made them
            try:
                study_id = probe.get_study_id_from_name(link.study_name)
                attrs = probe.get_study_user_attrs(study_id)
            finally:  # its connections now, not at garbage collection (64 workers: 500+)
                probe.engine.dispose()
            self.storage = open_url(link.storage, skip_table_creation=True,
                                    heartbeat_interval=int(attrs.get(HEARTBEAT_ATTR, 30)))
        self.interval = float(attrs.get(HEARTBEAT_ATTR, 30))
        self._heartbeat_storage = has_heartbeat(self.storage)
        pruner = attrs.get(PRUNER_ATTR, {"name": "median", "kwargs": {}})
        self.study = optuna.load_study(study_name=link.study_name, storage=self.storage,
                                       pruner=build_pruner(pruner["name"], pruner["kwargs"]))
        self.number = int(link.number)
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            study_id, self.number)
        self.trial = optuna.trial.Trial(self.study, self.trial_id)
        self.multi_objective = len(self.study.directions) > 1
        # the pruner compares the val_loss curves: only when that is the one objective
        self.reports = not self.multi_objective and list(link.objectives)[:1] == ["val_loss"]
        self.trial.set_user_attr("host", socket.gethostname())
        self.trial.set_user_attr("pid", os.getpid())
        self.grace_period = int(attrs.get(GRACE_ATTR, DEFAULT_GRACE))
        self.lost: Optional[HeartbeatLost] = None  # set when beats fail past grace_period
        self._missed_since: Optional[float] = None
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        """A beat at once, then every interval: Optuna fails only trials that have beaten
        (a job killed before its first beat would stay RUNNING on another machine)."""
        from sweep.study.storages import BEAT_ATTR

        while True:
            try:
                if self._heartbeat_storage:
                    self.storage.record_heartbeat(self.trial_id)
                else:  # gRPC proxy: the time of the beat, in the trial
                    self.storage.set_trial_user_attr(self.trial_id, BEAT_ATTR, time.time())
                if self._missed_since is not None:
                    log.info("trial %d: heartbeat back after %.0f s", self.number,
                             time.monotonic() - self._missed_since)
                    self._missed_since = None
            except Exception as error:  # one missed beat is not worth stopping the trial
                now = time.monotonic()
                if self._missed_since is None:
                    self._missed_since = now
                    log.warning("trial %d: heartbeat missed (%s: %s); the trial goes on, "
                                "and stops if none gets through for %d s (grace_period)",
                                self.number, type(error).__name__, first_line(error),
                                self.grace_period)
                elif now - self._missed_since > self.grace_period:
                    self.lost = HeartbeatLost(
                        f"no heartbeat reached the study's storage for "
                        f"{now - self._missed_since:.0f} s, past hydra.sweeper.grace_period="
                        f"{self.grace_period} s: other workers may have failed this trial "
                        f"and run another ({type(error).__name__}: {first_line(error)})")
                    log.error("trial %d: %s; stopping it", self.number, self.lost)
                    return
            if self._stop.wait(self.interval or 30):
                return

    @property
    def listener(self) -> Listener:
        return _Pruning(self)

    def report(self, report: EvalReport) -> None:
        # Step = micro-batches seen, so trials with different accumulation line up.
        from sweep.study.pruning import examples_attr
        from sweep.stats import example_record

        if not self.reports or report.step == 0:
            return
        if report.examples:  # for the paired pruner, before the value it explains
            self.trial.set_user_attr(examples_attr(report.iteration), example_record(
                report.examples, report.example_losses, report.example_tokens))
        self.trial.report(report.val_loss, report.iteration)
        if not report.final and self.trial.should_prune():
            raise TrialPruned(f"pruned at step {report.step} (val_loss {report.val_loss:.4f})")

    def resume_from(self) -> Tuple[Optional[str], Optional[str]]:
        """(checkpoint, MLflow run) this trial resumes from: a retry's, inherited from the
        trial it continues (``sweep.study.trials.retry_stopped``); Nones for a new trial."""
        from sweep.study.trials import CHECKPOINT_ATTR, retried

        frozen = self.storage.get_trial(self.trial_id)
        if retried(frozen) is None:
            return None, None
        return frozen.user_attrs.get(CHECKPOINT_ATTR), frozen.user_attrs.get("mlflow_run_id")

    def started(self, run_id: Optional[str], output_dir: str) -> None:
        if run_id:
            self.trial.set_user_attr("mlflow_run_id", run_id)
        self.trial.set_user_attr("output_dir", output_dir)

    def _tell(self, **kwargs: Any) -> None:
        self._stop.set()
        self.study.tell(self.number, skip_if_finished=True, **kwargs)

    def record(self, answers: Dict[str, float], constraints: Dict[str, str],
               measured: Dict[str, float]) -> None:
        """Before the tell: the validation answer metrics as user attrs (the leaderboard,
        warm start and termination read them) and each constraint's value (Optuna's
        ``set_constraint``: feasible when <= 0; the winner must be feasible)."""
        from sweep.study.objectives import constraint_value

        for name, value in answers.items():
            self.trial.set_user_attr(name, value)
        for name, bound in constraints.items():
            self.trial.set_constraint(f"{name} {bound}", constraint_value(bound,
                                                                          measured.get(name)))

    def complete(self, values: List[float]) -> None:
        self._tell(values=values if self.multi_objective else values[0])

    def prune(self) -> None:
        import optuna

        self._tell(state=optuna.trial.TrialState.PRUNED)

    def fail(self, reason: str, resumable: bool = False, exit_code: int = 1) -> None:
        """FAIL, with ``reason``; ``resumable``: it was stopped (a signal, a lost storage),
        not failed of itself, so the sweep resumes it from its checkpoint, if it has one;
        ``exit_code``: the status a single run would have ended with (2 bad input, 3 a
        failed trial, :mod:`sweep.errors`), which a sweep stopped by its failures exits with."""
        import optuna

        from sweep.study.trials import EXIT_CODE_ATTR, RESUMABLE_ATTR

        self.trial.set_user_attr("fail_reason", reason[:1000])
        self.trial.set_user_attr(RESUMABLE_ATTR, resumable)
        self.trial.set_user_attr(EXIT_CODE_ATTR, exit_code)
        self._tell(state=optuna.trial.TrialState.FAIL)


    def close(self) -> None:
        """Stop beating and give the storage's connections back (after the tell)."""
        self._stop.set()
        self._beat.join(timeout=10)
        if hasattr(self.storage, "engine"):
            self.storage.engine.dispose()
        elif hasattr(self.storage, "close"):
            self.storage.close()


def open_link(link: TrialLink) -> Optional[OptunaTrialLink]:
    """The job's Optuna trial, or None outside a sweep."""
    if link.number is None or not link.storage or not link.study_name:
        return None
    return OptunaTrialLink(link)
