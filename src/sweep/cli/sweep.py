"""``sweep`` / ``python -m sweep``: a thin ``@hydra.main`` over :func:`sweep.trial.run_trial`.

Returns the trial's best validation loss so that a Hydra sweeper can minimise it. Bad
input (config, data, model) is reported as one line naming the key, file or line, and
the process exits with status 2. Inside a sweep (``sweep -m``) the job is an Optuna
trial: it reports to it, may be pruned, and tells Optuna how it ended.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweep.config import CONFIG_DIR, register
from sweep.errors import InputError, SweepError, first_line
from sweep.testing.faults import CURRENT_TRIAL_ENV

log = logging.getLogger("sweep")

register()


def trial_runner(cfg: DictConfig):
    """The function ``runner._target_`` names (:func:`sweep.trial.run_trial` unless a test
    or the load benchmark swaps in :func:`sweep.testing.zero_cost.run`)."""
    from hydra.utils import get_method

    name = str(cfg.runner._target_)
    try:
        return get_method(name)
    except Exception as error:
        raise InputError(f"runner._target_={name}: not a function that can be imported "
                         f"({type(error).__name__}: {first_line(error)})") from None


def run_job(cfg: DictConfig, output_dir: Path, overrides: list) -> float:
    """One Hydra job: a plain trial, or a trial of an Optuna study (``cfg.trial``)."""
    from sweep import runtime

    # A launcher may run the job in a process of its own that never went through
    # sweep.cli.main (joblib's loky workers, submitit's SLURM jobs); a no-op otherwise.
    runtime.setup()
    from sweep.study.link import HeartbeatLost, TrialPruned, objective_values, open_link
    from sweep.study.objectives import measures

    run_trial = trial_runner(cfg)

    link_cfg = OmegaConf.to_object(cfg.trial)  # run_trial validates the whole config
    answer_val = val_answerer(cfg, link_cfg)
    link = open_link(link_cfg)
    if link is None:
        return run_trial(cfg, output_dir, overrides=overrides,
                         answer_val=answer_val).best_val_loss
    label = f"trial {link.number}"
    os.environ[CURRENT_TRIAL_ENV] = str(link.number)  # for sweep.testing.faults (tests)
    checkpoint = resume_point(cfg, link, output_dir, label)
    if checkpoint is not None:  # a stopped trial's retry goes on from its checkpoint
        cfg.train.resume = checkpoint
    try:
        result = run_trial(cfg, output_dir, overrides=overrides, listeners=[link.listener],
                           parent_run_id=link_cfg.parent_run_id, run_name=f"trial-{link.number}",
                           tags={"sweep.study": str(link_cfg.study_name),
                                 "sweep.trial": str(link.number)},
                           label=label, on_start=link.started, answer_val=answer_val)
    except TrialPruned as pruned:
        link.prune()
        link.close()
        log.info("%s %s", label, pruned)
        return float("nan")
    except BaseException as error:
        try:
            link.fail(f"{type(error).__name__}: {error}",
                      resumable=isinstance(error, (KeyboardInterrupt, HeartbeatLost)),
                      exit_code=getattr(error, "exit_code", 1))
        finally:
            link.close()
        raise
    finally:
        os.environ.pop(CURRENT_TRIAL_ENV, None)
    try:
        values = objective_values(list(link_cfg.objectives), result)
        link.trial.set_user_attr("val_loss_se", result.best_val_loss_se)
        link.record(result.answers, dict(link_cfg.constraints), measures(result))
        link.complete(values)
        return values[0]
    finally:
        link.close()


def val_answerer(cfg: DictConfig, link_cfg):
    """:func:`sweep.evaluation.val_answers.answerer` when this run answers the validation
    questions (``eval.val_answers``, or an objective or constraint that needs them)."""
    from sweep.study.objectives import needs_answers

    if not needs_answers(list(link_cfg.objectives), dict(link_cfg.constraints),
                         cfg.eval.val_answers):
        return None
    from sweep.config import to_typed
    from sweep.evaluation.val_answers import answerer

    return answerer(to_typed(cfg).eval)


def resume_point(cfg: DictConfig, link, output_dir: Path, label: str):
    """Where a stopped trial's retry resumes (:func:`sweep.study.finish.local_checkpoint`);
    None for a new trial, or when its checkpoint cannot be read."""
    from sweep.config import to_typed
    from sweep.study.finish import local_checkpoint

    checkpoint, run_id = link.resume_from()
    if checkpoint is None:
        return None
    return local_checkpoint(checkpoint, run_id, to_typed(cfg).mlflow, output_dir,
                            f"{label} (continues a stopped trial)")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def app(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        return run_job(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except SweepError as error:
        log.error("%s", error)
        if cfg.trial.number is not None:
            raise  # in a sweep: this trial fails, the sweep goes on
        sys.exit(error.exit_code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the trial's MLflow run ends KILLED, its Optuna
    trial FAIL, the study's run KILLED; nothing is left RUNNING."""


def _terminate(signum, frame) -> None:
    raise Terminated("SIGTERM")


def main() -> None:
    from sweep.secrets import refuse_in_argv

    refuse_in_argv("sweep")  # before Hydra writes the command line anywhere
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(f"sweep: stopped by {'SIGTERM' if terminated else 'Ctrl-C'}; the running "
              "trial is recorded as KILLED (MLflow) and FAIL (Optuna), after a checkpoint "
              "if it was training. Run the same command to go on (a single run: with "
              "train.resume=auto).", file=sys.stderr, flush=True)
        sys.exit(143 if terminated else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
