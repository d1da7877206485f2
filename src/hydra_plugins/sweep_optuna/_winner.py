"""What a finished sweep does with its winner: the held-out evaluation of the best trial
(``eval.after_sweep``) and its registration as an MLflow model (``registry.after_sweep``),
each once per winner. Neither can fail the sweep, which is done and recorded: a failure
is one warning saying how to retry."""

from __future__ import annotations

import logging

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.study.winner import best as winner

__all__ = ["EVALUATED_ATTR", "evaluate_best", "register_best"]

log = logging.getLogger("sweep.sweeper")
EVALUATED_ATTR = "evaluated_trial"  # study user attr: the best trial evaluated on the test split


def _reason(error: Exception) -> str:
    from sweep.errors import SweepError

    return str(error) if isinstance(error, SweepError) else f"{type(error).__name__}: {error}"


def evaluate_best(config: DictConfig, study: optuna.Study) -> None:
    """Held-out evaluation of the best trial, once per winner: the test split only
    reports, it chooses nothing."""
    if not OmegaConf.select(config, "eval.after_sweep", default=False):
        return
    best = winner(study)
    if best is None or len(study.directions) > 1:
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
    except Exception as error:
        log.warning("held-out evaluation of best trial %d failed: %s (run sweep-eval "
                    "target=<this sweep's folder> to retry)", best.number, _reason(error))
        return
    study.set_user_attr(EVALUATED_ATTR, best.number)
    print(summary(result), flush=True)


def register_best(config: DictConfig, study: optuna.Study) -> None:
    """The best trial's adapter as the registered model's ``registry.alias`` version."""
    from sweep.shipping.registry import register_best as register

    try:
        uri = register(config, study)
    except Exception as error:
        log.warning("registering the best trial as an MLflow model failed: %s (re-run the "
                    "same sweep command to retry)", _reason(error))
        return
    if uri:
        print(f"best adapter registered: mlflow.pyfunc.load_model({uri!r}).predict([...])",
              flush=True)
