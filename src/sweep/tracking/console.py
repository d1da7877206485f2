"""A listener that logs one line per report to the console (and Hydra's log file)."""

from __future__ import annotations

import logging

from sweep.training.events import CheckpointReport, EvalReport, Listener, TrainReport

log = logging.getLogger("sweep.train")


class ConsoleReporter(Listener):
    def __init__(self, total_steps: int, label: str = ""):
        self.total_steps = total_steps
        self.prefix = f"{label}  " if label else ""

    def on_train_report(self, r: TrainReport) -> None:
        log.info(
            "%sstep %d/%d  train_loss %.4f  lr %.2e  grad_norm %.3f  %.0f tok/s  peak %.2f GB",
            self.prefix, r.step, self.total_steps, r.train_loss, r.learning_rate, r.grad_norm,
            r.tokens_per_sec, r.peak_memory_gb,
        )

    def on_eval_report(self, r: EvalReport) -> None:
        scope = "all" if r.whole_split else "subset of"
        log.info("%sstep %d/%d  val_loss %.4f +- %.4f  val_ppl %.2f  (%s %d examples)%s  "
                 "(%.1f s)", self.prefix, r.step, self.total_steps, r.val_loss, r.val_loss_se,
                 r.val_ppl, scope, len(r.examples), "  best" if r.is_best else "", r.seconds)

    def on_checkpoint(self, r: CheckpointReport) -> None:
        if r.kind != "best":
            log.info("step %d  saved %s", r.step, r.path)
