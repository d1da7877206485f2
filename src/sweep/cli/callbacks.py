"""Hydra callbacks of every ``sweep`` command (``hydra.callbacks`` in ``conf/config.yaml``).

:class:`OutputFolder` makes the run's (or the sweep's) output folder before Hydra does:
a folder that cannot be made (a file in the way, no permission) is one line naming
``hydra.run.dir`` or ``hydra.sweep.dir`` and exit status 2, where Hydra's own ``mkdir``
would end in a traceback and status 1.

:class:`FinishWinner`, :class:`EvaluateWinner` and :class:`RegisterWinner` are what a
finished sweep does with its winner: training it on to its whole budget when the trials
stopped short (``train.stop_after_epochs``), the held-out evaluation of the best trial
(``eval.after_sweep``) and its registration as an MLflow model (``registry.after_sweep``),
each once per winner, after the sweeper has returned (the sweep loop itself only runs
trials).
"""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.errors import SweepError
from sweep.paths import ensure_folder
from sweep.study import EVALUATED_ATTR, WORKER_ENV

__all__ = ["OutputFolder", "FinishWinner", "EvaluateWinner", "RegisterWinner"]

log = logging.getLogger("sweep.sweeper")


class OutputFolder(Callback):
    def _ensure(self, config: DictConfig, key: str) -> None:
        value = str(config.hydra[key.split(".")[1]].dir)
        try:
            ensure_folder(value, key, value)
        except SweepError as error:
            print(f"sweep: {error}", file=sys.stderr, flush=True)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._ensure(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._ensure(config, "hydra.sweep.dir")


class _AfterSweep(Callback, ABC):
    """Once the sweep is over (Hydra calls ``on_multirun_end`` only when the sweeper
    returned: an aborted sweep ends before), in the process the user started (not in the
    extra workers it launched), for the project's sweeper only, one process at a time per
    study. Nothing here can fail the sweep, which is done and recorded: a failure is one
    warning saying how to retry."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if (os.environ.get(WORKER_ENV) or not _is_our_sweeper(config)
                or not OmegaConf.select(config, self.switch, default=False)):
            return
        import optuna

        from sweep.study.locks import study_lock
        from sweep.study.storages import open_url

        url, name = str(config.hydra.sweeper.storage), str(config.hydra.sweeper.study_name)
        try:
            study = optuna.load_study(study_name=name, storage=open_url(url))
        except Exception as error:  # noqa: BLE001
            log.warning("%s skipped: study %s cannot be read (%s)", self.what, name,
                        _reason(error))
            return
        if len(study.directions) > 1:  # a Pareto front has no single winner to ship
            return
        with study_lock(url, name):  # sweeps ending together: one after the other
            self.after(config, study)

    what = ""    # what it does, for its warning
    switch = ""  # the config key that turns it on

    @abstractmethod
    def after(self, config: DictConfig, study: Any) -> None:
        """Its work on the finished single-objective ``study``, under the study's lock."""


class FinishWinner(_AfterSweep):
    """The best trial trained on from its checkpoint to its whole budget, when the trials
    searched a prefix of it (:mod:`sweep.study.finish`), before it is evaluated."""

    what = "training the best trial on to its whole budget"
    switch = "train.finish_winner"

    def after(self, config: DictConfig, study: Any) -> None:
        from sweep.config import to_typed
        from sweep.study.finish import finish_winner
        from sweep.study.objectives import needs_answers

        cfg = config.copy()
        with open_dict(cfg):
            del cfg["hydra"]
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True, enum_to_str=True)
        constraints = dict(sweeper.get("constraints") or {})
        answer_val = None
        if needs_answers(list(sweeper.get("objectives") or []), constraints,
                         OmegaConf.select(cfg, "eval.val_answers")):
            from sweep.evaluation.val_answers import answerer

            answer_val = answerer(to_typed(cfg).eval)
        try:
            done = finish_winner(study, Path(str(config.hydra.sweep.dir)) / "report",
                                 to_typed(cfg).mlflow, answer_val=answer_val,
                                 constraints=constraints)
        except Exception as error:  # noqa: BLE001
            log.warning("training the best trial on to its whole budget failed: %s (re-run "
                        "the same sweep command to go on from its newest checkpoint)",
                        _reason(error))
            return
        if done:
            print(f"best trial {done['trial']} trained on to the whole budget "
                  f"({done['iterations']} micro-batches): val_loss {done['search_val_loss']:.4f}"
                  f" -> {done['val_loss']:.4f} +- {done['val_loss_se']:.4f}"
                  + "".join(f"; {k} {done['search'].get(k, float('nan')):.3f} -> {v:.3f}"
                            for k, v in done.get("answers", {}).items()
                            if k in constraints), flush=True)


class EvaluateWinner(_AfterSweep):
    """Held-out evaluation of the best trial (``eval.after_sweep``), once per winner: the
    test split only reports, it chooses nothing."""

    what = "held-out evaluation of the best trial"
    switch = "eval.after_sweep"

    def after(self, config: DictConfig, study: Any) -> None:
        from sweep.study.winner import best as winner

        best = winner(study)
        if best is None:
            return
        if study.user_attrs.get(EVALUATED_ATTR) == best.number:
            log.info("best trial %d was evaluated on the test split already", best.number)
            return
        from sweep.evaluation.heldout import evaluate_target, summary

        cfg = config.copy()
        with open_dict(cfg):
            cfg.target = best.user_attrs.get("mlflow_run_id") or best.user_attrs.get("output_dir")
            del cfg["hydra"]
        try:
            result = evaluate_target(cfg)
        except Exception as error:  # noqa: BLE001
            log.warning("held-out evaluation of best trial %d failed: %s (run sweep-eval "
                        "target=<this sweep's folder> to retry)", best.number, _reason(error))
            return
        study.set_user_attr(EVALUATED_ATTR, best.number)
        print(summary(result), flush=True)


class RegisterWinner(_AfterSweep):
    """The best trial's adapter as the registered model's ``registry.alias`` version
    (``registry.after_sweep``), once per winner."""

    what = "registering the best trial"
    switch = "registry.after_sweep"

    def after(self, config: DictConfig, study: Any) -> None:
        from sweep.shipping.registry import register_best

        try:
            uri = register_best(config, study)
        except Exception as error:  # noqa: BLE001
            log.warning("registering the best trial as an MLflow model failed: %s (re-run "
                        "the same sweep command to retry)", _reason(error))
            return
        if uri:
            print(f"best adapter registered: mlflow.pyfunc.load_model({uri!r}).predict([...])",
                  flush=True)


def _is_our_sweeper(config: DictConfig) -> bool:
    target = OmegaConf.select(config, "hydra.sweeper._target_", default="") or ""
    return str(target).startswith("hydra_plugins.sweep_optuna.")


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, SweepError) else f"{type(error).__name__}: {error}"
