"""One trial, start to end: config -> data -> base model -> LoRA -> train -> track.

:func:`run_trial` is a plain function (tests call it); ``sweep.cli`` wraps it in
``@hydra.main``. It returns the best validation loss, the value a sweep minimises.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from omegaconf import DictConfig

from sweep.runtime.blas import blas_choice
from sweep.config import flatten, to_typed
from sweep.config.schema import SweepConfig
from sweep.training.events import Listener, Listeners, TrainResult

__all__ = ["TrialResult", "run_trial", "train_settings"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialResult:
    best_val_loss: float  # over the whole validation split
    best_step: int
    adapter_dir: Path
    model_dir: str
    run_id: Optional[str]
    trainable_parameters: int
    train: TrainResult
    seconds: float
    # validation answer metrics (val_rougeL, val_citation_precision, ... and their _se),
    # when the run was given an ``answer_val``
    answers: Dict[str, float] = field(default_factory=dict)

    @property
    def best_val_loss_se(self) -> float:
        return self.train.best_val_loss_se


CHECKPOINT_FROM_TOKENS = 2048


def train_settings(cfg: SweepConfig, n_train: int, longest: int = 0):
    """The loop's settings; ``longest``: the longest training example, in tokens."""
    from sweep.training.loop import LoopSettings

    t = cfg.train
    checkpoint = t.grad_checkpoint
    if checkpoint is None:
        checkpoint = t.batch_size * min(longest, t.max_seq_length) >= CHECKPOINT_FROM_TOKENS
    iters, eval_every_iters = t.iters, t.eval_every_iters
    if t.epochs is not None:
        iters = max(1, math.ceil(t.epochs * n_train / t.batch_size))
    if t.eval_every_epochs is not None:
        eval_every_iters = max(1, round(t.eval_every_epochs * n_train / t.batch_size))
    stop_at = None
    if t.stop_after_epochs is not None:
        stop_at = min(iters, max(1, round(t.stop_after_epochs * n_train / t.batch_size)))
    return LoopSettings(
        iters=iters, batch_size=t.batch_size, grad_accumulation=t.grad_accumulation,
        max_seq_length=t.max_seq_length, max_grad_norm=t.max_grad_norm,
        eval_every=t.eval_every, eval_every_iters=eval_every_iters,
        val_batches=t.val_batches, save_every=t.save_every,
        save_every_seconds=60.0 * t.save_every_minutes,
        early_stop_patience=t.early_stop_patience or 0,
        report_every=t.report_every, compile=t.compile, grad_checkpoint=checkpoint,
        seed=cfg.seed, stop_at=stop_at,
    )


def _fit_to_length(train_set, val_set, train: Any):
    """Report what ``train.max_seq_length`` cuts (before training; recorded on the run)
    and, with ``train.drop_long_examples``, drop the over-long examples instead."""
    from sweep.data.batches import Subset, truncation
    from sweep.data.records import DataError

    figures: Dict[str, Any] = {}
    sets = {"train": train_set, "valid": val_set}
    for name, dataset in list(sets.items()):
        t = truncation(dataset, train.max_seq_length)
        if t.cut_examples and train.drop_long_examples:
            keep = sorted(set(range(t.examples)) - set(t.long_indexes))
            log.warning("%s split: dropped %d of %d examples longer than train.max_seq_length="
                        "%d tokens (train.drop_long_examples=true)", name, t.cut_examples,
                        t.examples, train.max_seq_length)
            if not keep:
                raise DataError(f"the {name} split has no example of at most train."
                                f"max_seq_length={train.max_seq_length} tokens to keep "
                                "(train.drop_long_examples=true dropped all of them)")
            sets[name] = Subset(dataset, keep)
            figures[f"data.{name}_dropped_examples"] = t.cut_examples
            t = truncation(sets[name], train.max_seq_length)
        elif t.cut_examples:
            log.warning("%s split: %d of %d examples are longer than train.max_seq_length=%d "
                        "tokens and are cut: %d of %d answer tokens lost, %d examples left with "
                        "no answer (train.drop_long_examples=true drops them instead)", name,
                        t.cut_examples, t.examples, train.max_seq_length, t.answer_tokens_lost,
                        t.answer_tokens, t.empty_examples)
        figures.update({f"data.{name}_cut_examples": t.cut_examples,
                        f"data.{name}_answer_tokens": t.answer_tokens_kept,
                        f"data.{name}_answer_tokens_lost": t.answer_tokens_lost})
    return sets["train"], sets["valid"], figures


def _require_answer_tokens(figures: Dict[str, Any], max_seq_length: int) -> None:
    from sweep.errors import TrialFailed

    for name in ("train", "valid"):
        if figures[f"data.{name}_answer_tokens"] == 0:
            lost = figures[f"data.{name}_answer_tokens_lost"]
            raise TrialFailed(
                f"the {name} split has no answer token left to train on or score: "
                f"train.max_seq_length={max_seq_length} cuts all {lost} of them (the prompts "
                "are longer); raise train.max_seq_length or shorten the prompts")


def _resume(typed: SweepConfig, output_dir: Path, flat: Dict[str, Any], train_set):
    """The checkpoint ``train.resume`` names (or None), checked against this run's
    training config and data; and what each new checkpoint records for that check."""
    from sweep.training.checkpoint import (CheckpointError, data_digest, find_resume,
                                           fingerprint, training_config)

    config = training_config(flat)
    meta = {"fingerprint": fingerprint(config), "config": config,
            "data_digest": data_digest(train_set)}
    resume = find_resume(typed.train.resume, output_dir, config, log)
    if resume is None:
        if typed.train.resume is not None:
            log.info("train.resume=%s: no checkpoint to resume from; training starts from "
                     "the beginning", typed.train.resume)
        return None, meta
    if resume.state.get("data_digest") != meta["data_digest"]:
        raise CheckpointError(f"train.resume: {resume.path} was trained on other data: the "
                              f"train split of data.path={typed.data.path} changed since")
    log.info("resumed from %s (micro-batch %d of %d, optimizer step %d)", resume.path,
             resume.state["iteration"], resume.state["iters"], resume.state["step"])
    return resume, meta


def _base_scores(typed: SweepConfig, flat: Dict[str, Any], model_dir: str, val_set, settings):
    """The cache of this run's base-model validation score (one per model, data and
    settings: :mod:`sweep.training.base_scores`)."""
    from sweep.paths import cache_root
    from sweep.training.base_scores import BaseScores, base_scores_key
    from sweep.training.checkpoint import data_digest
    from sweep.training.validation import scored_subset

    subset = scored_subset(len(val_set), settings.batch_size, settings.val_batches)
    key = base_scores_key(flat, model_dir, data_digest(val_set), subset)
    return BaseScores(cache_root(typed.cache_dir) / "base-scores", key)


def run_trial(
    cfg: DictConfig,
    output_dir: Path,
    *,
    overrides: Sequence[str] = (),
    listeners: Iterable[Listener] = (),
    parent_run_id: Optional[str] = None,
    run_name: Optional[str] = None,
    tags: Optional[Dict[str, str]] = None,
    label: str = "",
    on_start: Optional[Callable[[Optional[str], str], None]] = None,
    answer_val: Optional[Callable[..., Dict[str, float]]] = None,
) -> TrialResult:
    """Train one LoRA adapter as ``cfg`` says; the best adapter ends in
    ``output_dir/adapter`` and, when tracking is on, in the MLflow run's ``adapter/``.

    A listener may stop the trial by raising :class:`~sweep.training.events.TrialStopped`
    (a pruner does): the adapter so far is still logged, and the run ends KILLED with the
    tag ``sweep.state`` saying why. Any other exception ends the run FAILED.

    ``answer_val(model, tokenizer, validation examples, adapter folder)``, if given
    (:func:`sweep.evaluation.val_answers.answerer`), scores the best adapter's answers to
    the validation questions once training is done; its metrics are logged on the run.
    """
    started = time.perf_counter()
    typed = to_typed(cfg)
    output_dir = Path(output_dir)
    log.info(blas_choice().describe())

    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits
    from sweep.models.loader import load_base
    from sweep.tracking.console import ConsoleReporter
    from sweep.tracking.mlflow_tracker import check_tracking
    from sweep.tracking.run import open_tracker, tracked_run, write_config
    from sweep.config.templates import use
    from sweep.training.checkpoint import Checkpoints
    from sweep.training.lora import apply_lora, save_adapter, trainable_parameters
    from sweep.training.loop import train
    from sweep.training.optim import build_optimizer, build_schedule

    if typed.mlflow.enabled:
        check_tracking(typed.mlflow)  # before minutes of loading, not after
    splits = load_splits(typed.data, typed.seed)
    loaded = load_base(typed.model, typed.cache_dir, typed.seed)
    model, tokenizer = loaded.model, use(loaded.tokenizer, typed.data.template, typed.model.name)
    train_set, val_set, cut = _fit_to_length(
        tokenize(splits.train, tokenizer, typed.data.mask_prompt),
        tokenize(splits.valid, tokenizer, typed.data.mask_prompt), typed.train)
    if len(train_set) < typed.train.batch_size:  # found now, before a run is recorded
        from sweep.data.records import DataError

        raise DataError(f"data.path={typed.data.path}: the train split has {len(train_set)} "
                        f"example(s), fewer than train.batch_size={typed.train.batch_size}")
    longest = max(len(train_set[i][0]) for i in range(len(train_set)))
    settings = train_settings(typed, len(train_set), longest)
    params: Dict[str, Any] = flatten(typed)
    resume, resume_meta = _resume(typed, output_dir, params, train_set)
    adapter_cfg = apply_lora(model, typed.lora, typed.seed)
    n_trainable = trainable_parameters(model)
    schedule = build_schedule(typed.scheduler, typed.optimizer.lr, settings.total_steps)
    optimizer = build_optimizer(typed.optimizer, schedule)
    log.info("model %s (%s), %d trainable LoRA parameters, %d train / %d valid examples, "
             "%d micro-batches = %d optimizer steps%s", typed.model.name, loaded.path,
             n_trainable, len(train_set), len(val_set), settings.iters, settings.total_steps,
             ", gradient checkpointing" if settings.grad_checkpoint else "")

    tracker = open_tracker(typed.mlflow, run_name, parent_run_id)
    params.update({
        "lora.scale": typed.lora.scale,
        "trainable_parameters": n_trainable,
        "train.total_steps": settings.total_steps,
        "train.effective_batch_size": typed.train.batch_size * typed.train.grad_accumulation,
        "data.train_examples": len(train_set),
        "data.valid_examples": len(val_set),
        "model.dir": loaded.path,
        "blas": blas_choice().name,
        "train.grad_checkpoint_used": settings.grad_checkpoint,
        **cut,
    })
    adapter_dir = output_dir / "adapter"

    def save(name: str) -> Path:
        folder = adapter_dir if name == "best" else output_dir / "checkpoints" / name
        return save_adapter(model, adapter_cfg, folder)

    def log_adapter_so_far() -> None:
        if (adapter_dir / "adapters.safetensors").exists():
            tracker.log_artifacts(adapter_dir, "adapter")

    tags = {"sweep.output_dir": str(output_dir.resolve()), **(tags or {})}
    if resume is not None:
        tags["sweep.resumed_from"] = str(resume.path.resolve())
    continue_run = resume.state.get("run_id") if resume is not None else None
    with tracked_run(tracker, params, tags, on_stop=log_adapter_so_far,
                     continue_run=continue_run):
        if on_start is not None:  # the Optuna trial may have been failed meanwhile
            on_start(tracker.run_id, str(output_dir.resolve()))
        _require_answer_tokens(cut, typed.train.max_seq_length)
        tracker.log_artifacts(write_config(cfg, overrides, output_dir / "config"), "config")
        checkpoints = Checkpoints(output_dir / "checkpoints", adapter_cfg,
                                  {**resume_meta, "run_id": tracker.run_id},
                                  typed.train.keep_checkpoints)
        result = train(model, optimizer, train_set, val_set, settings,
                       listener=Listeners([ConsoleReporter(settings.total_steps, label),
                                           tracker, *listeners]),
                       save_adapter=save, checkpoints=checkpoints, resume=resume,
                       base_scores=_base_scores(typed, params, loaded.path, val_set, settings))
        tracker.log_metrics({"best_val_loss": result.best_val_loss,
                             "best_val_loss_se": result.best_val_loss_se,
                             "best_step": result.best_step,
                             "best_iteration": result.best_iteration,
                             "train_seconds": result.train_seconds,
                             "eval_seconds": result.eval_seconds}, result.iterations)
        tracker.log_artifacts(adapter_dir, "adapter")
        answers: Dict[str, float] = {}
        if answer_val is not None:
            if not all("messages" in e for e in splits.valid):
                from sweep.errors import InputError

                raise InputError(f"data.path={typed.data.path}: validation answers need "
                                 "question-answer records, not plain text (eval.val_answers)")
            answers = answer_val(model, tokenizer, splits.valid, adapter_dir)
            tracker.log_metrics(answers, result.iterations)
    seconds = time.perf_counter() - started
    if result.paused:
        log.info("stopped at micro-batch %d of %d (train.stop_after_epochs=%g), a checkpoint "
                 "written there: train.resume=auto (the same command without "
                 "train.stop_after_epochs) trains on to the whole budget", result.iterations,
                 settings.iters, typed.train.stop_after_epochs)
    log.info("best val_loss %.4f +- %.4f (ppl %.2f; whole validation split) at step %d; "
             "adapter: %s; %.1f s (training %.1f s, evaluation %.1f s%s)", result.best_val_loss,
             result.best_val_loss_se, math.exp(result.best_val_loss), result.best_step,
             adapter_dir, seconds, result.train_seconds, result.eval_seconds,
             "; both since the run's start, before it was resumed" if resume else "")
    return TrialResult(result.best_val_loss, result.best_step, adapter_dir, loaded.path,
                       tracker.run_id, n_trainable, result, seconds, answers)
