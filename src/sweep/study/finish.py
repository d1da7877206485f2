"""The sweep's winner trained on to the whole budget.

A sweep whose trials train a prefix of their budget (``train.stop_after_epochs``, fixed
in ``hydra.sweeper.params``; the schedule stays over ``train.epochs``) compares them at
equal data and cheaply; each stops with a checkpoint of its whole training state. Once the
sweep is over, the best one goes on from that checkpoint to the whole budget, as the same
run (its folder, its MLflow run: the curve is one piece), exactly as if it had never
stopped, so the adapter the sweep ships is trained as the user would train it. The
study records the result (``finished_winner``) so that re-running the command does not
train it again; a finishing run killed midway goes on from its newest checkpoint when the
command runs again (``train.save_every_minutes``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf, open_dict

from sweep.study import FINISHED_ATTR  # study attr: the winner's whole-budget result

__all__ = ["FINISHED_ATTR", "finish_winner", "local_checkpoint"]

log = logging.getLogger("sweep.sweeper")


def local_checkpoint(checkpoint: Optional[str], run_id: Optional[str], mlflow_cfg: Any,
                     folder: Path, label: str) -> Optional[str]:
    """``checkpoint`` where it was written (one machine, or a shared file system), else
    the copy the trial's MLflow run holds (``mlflow.log_checkpoints``), fetched into
    ``folder/inherited``; None (and a warning) when neither can be read."""
    if checkpoint is None:
        return None
    if Path(checkpoint).exists():
        return checkpoint
    if run_id and mlflow_cfg.enabled:
        from sweep.tracking.mlflow_tracker import fetch_checkpoint

        fetched = fetch_checkpoint(mlflow_cfg, run_id, folder / "inherited")
        if fetched is not None:
            log.info("%s: its checkpoint is not on this machine; fetched from its MLflow run "
                     "%s", label, run_id)
            return str(fetched)
    log.warning("%s: its checkpoint, %s, is not on this machine, nor in its MLflow run "
                "(mlflow.log_checkpoints); training starts from the beginning", label,
                checkpoint)
    return None


def finish_winner(study: Any, report_dir: Optional[Path] = None, mlflow_cfg: Any = None,
                  answer_val: Any = None, constraints: Optional[Dict[str, str]] = None
                  ) -> Optional[Dict[str, Any]]:
    """Train the best trial of ``study`` on to its whole budget, if it stopped short; its
    result (also in the study's ``finished_winner`` attr), or None when there is nothing
    to do. A winner trained on another machine is finished here, in ``report_dir``'s
    sweep folder, from its MLflow run's config and checkpoint (``mlflow_cfg``: this
    command's tracking settings). The sweep's ``report_dir`` (and its MLflow parent run's
    ``report/``) then holds the finished adapter as ``best_adapter``."""
    from hydra.utils import get_method

    from sweep.config import to_typed
    from sweep.study.trials import CHECKPOINT_ATTR
    from sweep.study.winner import best as winner

    best = winner(study)
    if best is None:
        return None
    done = study.user_attrs.get(FINISHED_ATTR) or {}
    if done.get("trial") == best.number and done.get("state") == "done":
        log.info("best trial %d was trained to its whole budget already (val_loss %.4f)",
                 best.number, done["val_loss"])
        return None
    folder, cfg = _winner_folder_and_config(best, report_dir, mlflow_cfg)
    if cfg is None:
        return None
    stop = OmegaConf.select(cfg, "train.stop_after_epochs")
    if stop is None and done.get("trial") == best.number:  # a finishing run stopped midway
        stop = done.get("search_epochs")  # (it saved its own config, without the key)
    if stop is None:
        return None
    if CHECKPOINT_ATTR not in best.user_attrs:  # a runner that writes none (zero-cost)
        log.warning("best trial %d stopped at train.stop_after_epochs=%g without a "
                    "checkpoint to go on from; it stays trained to its search budget",
                    best.number, stop)
        return None
    label = f"trial {best.number}, on to the whole budget"
    if (folder / "checkpoints").is_dir():  # its newest: a finishing run stopped midway's
        resume = "auto"
    else:
        resume = local_checkpoint(best.user_attrs.get(CHECKPOINT_ATTR),
                                  best.user_attrs.get("mlflow_run_id"), to_typed(cfg).mlflow,
                                  folder, label)
    with open_dict(cfg):
        cfg.train.stop_after_epochs = None
        cfg.train.resume = resume or "auto"
    log.info("best trial %d (val_loss %.4f after train.stop_after_epochs=%g): training it "
             "on to the whole budget", best.number, best.value, stop)
    study.set_user_attr(FINISHED_ATTR, {  # for sweep-status meanwhile
        "trial": best.number, "state": "running", "host": socket.gethostname(),
        "pid": os.getpid(), "started": time.time(), "search_val_loss": best.value,
        "search_epochs": stop})
    run_trial = get_method(str(OmegaConf.select(cfg, "runner._target_",
                                                default="sweep.trial.run_trial")))
    extra = {"answer_val": answer_val} if answer_val is not None else {}
    result = run_trial(cfg, folder, overrides=["train.stop_after_epochs=null"],
                       run_name=f"trial-{best.number}", label=label,
                       tags={"sweep.trial": str(best.number), "sweep.finished": "true"},
                       **extra)
    record = {"trial": best.number, "state": "done", "val_loss": result.best_val_loss,
              "val_loss_se": result.best_val_loss_se, "search_val_loss": best.value,
              "search_epochs": stop, "iterations": result.train.iterations,
              "run_id": result.run_id, "seconds": round(result.seconds, 1)}
    if result.answers:  # its validation answers after the whole budget, against the search's
        record["answers"] = dict(result.answers)
        record["search"] = {k: best.user_attrs[k] for k in result.answers
                            if k in best.user_attrs}
        record["missed_constraints"] = _missed(constraints or {}, result)
    study.set_user_attr(FINISHED_ATTR, record)
    if report_dir is not None:
        _refresh_report(study, folder / "adapter", Path(report_dir), record,
                        to_typed(cfg).mlflow)
    return record


def _missed(constraints: Dict[str, str], result: Any) -> Dict[str, float]:
    """The constraints the finished winner no longer meets (more training can cost what
    the search measured at its prefix), each with its value; a warning line for each."""
    from sweep.study.objectives import constraint_value, measures

    measured, missed = measures(result), {}
    for name, bound in constraints.items():
        if constraint_value(bound, measured.get(name)) > 0:
            missed[name] = measured.get(name)
            log.warning("the winner trained on to its whole budget misses the constraint %s %s "
                        "(%s); it met it at the search's budget: docs/search.md", name, bound,
                        measured.get(name))
    return missed


def _winner_folder_and_config(best: Any, report_dir: Optional[Path], mlflow_cfg: Any):
    """The winner's run folder and its saved config: where it trained, or (trained on
    another machine) this sweep's folder for it, with the config its MLflow run logged;
    (None, None) with a warning when neither is there."""
    folder = Path(best.user_attrs.get("output_dir") or "")
    saved = folder / "config" / "config.yaml"
    if best.user_attrs.get("output_dir") and saved.is_file():
        return folder, OmegaConf.load(saved)
    run_id = best.user_attrs.get("mlflow_run_id")
    if report_dir is not None and run_id and mlflow_cfg is not None and mlflow_cfg.enabled:
        from mlflow.tracking import MlflowClient

        here = Path(report_dir).parent / str(best.number)
        try:
            fetched = MlflowClient(tracking_uri=mlflow_cfg.tracking_uri).download_artifacts(
                run_id, "config/config.yaml", str(here / "fetched"))
        except Exception as error:  # noqa: BLE001
            log.warning("best trial %d: its config is neither in %s nor readable from its "
                        "MLflow run %s (%s: %s); it stays trained to its search budget",
                        best.number, saved, run_id, type(error).__name__, error)
            return None, None
        log.info("best trial %d trained on another machine (%s); it goes on in %s, from its "
                 "MLflow run's config", best.number, folder, here)
        return here, OmegaConf.load(fetched)
    log.warning("best trial %d: its config (%s) is not on this machine; it stays trained to "
                "its search budget", best.number, saved)
    return None, None


def _refresh_report(study: Any, adapter: Path, report_dir: Path, record: Dict[str, Any],
                    mlflow_cfg: Any) -> None:
    """The sweep's report (written when the sweep ended) gets the finished adapter."""
    import json
    import shutil

    from sweep.study import PARENT_ATTR

    target = report_dir / "best_adapter"
    if adapter.is_dir() and report_dir.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(adapter, target)
        (report_dir / "finished_winner.json").write_text(json.dumps(record, indent=1) + "\n")
    parent = study.user_attrs.get(PARENT_ATTR)
    if not (mlflow_cfg.enabled and parent and target.is_dir()):
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_cfg.tracking_uri)
    client.log_metric(parent, "best_value_whole_budget", record["val_loss"])
    client.set_tag(parent, "sweep.finished_trial", str(record["trial"]))
    client.log_artifacts(parent, str(target), "report/best_adapter")
    client.log_artifact(parent, str(report_dir / "finished_winner.json"), "report")
