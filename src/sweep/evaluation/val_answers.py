"""Answers on the validation split at the end of a trial: what lets a sweep optimise or
constrain answer quality (``hydra.sweeper.objectives=[val_loss, val_citation_precision]``,
``hydra.sweeper.constraints``) while the test split stays report-only.

The trial's best adapter answers the first ``eval.val_questions`` validation questions
(all by default) greedily, batched as ``sweep-eval`` does, and the answers are scored with
the same metrics (:mod:`sweep.evaluation.metrics`), each with its standard error over the
questions. ``sweep.trial.run_trial`` calls the function :func:`answerer` returns; this
module is handed to it by the command (``sweep.cli.sweep``), so training never imports
evaluation.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Sequence

__all__ = ["answerer"]

log = logging.getLogger("sweep.eval")


def answerer(eval_cfg: Any) -> Callable[[Any, Any, Sequence[dict], Path], Dict[str, float]]:
    """``(model, tokenizer, validation examples, adapter folder) -> {val_<metric>: value,
    val_<metric>_se: ..., val_answer_seconds: ...}`` for the settings in ``eval_cfg``."""

    def answer(model: Any, tokenizer: Any, examples: Sequence[dict],
               adapter_dir: Path) -> Dict[str, float]:
        import mlx.core as mx

        from sweep.evaluation.answers import fused_adapters, generate_answers, questions
        from sweep.evaluation.metrics import aggregate, score_item

        start = time.perf_counter()
        weights = Path(adapter_dir) / "adapters.safetensors"
        if weights.is_file():  # the best adapter, not the last step's weights
            model.load_weights(str(weights), strict=False)
            mx.eval(model.parameters())
        qs = questions(list(examples)[:eval_cfg.val_questions or len(examples)], tokenizer)
        with fused_adapters(model):
            answers = generate_answers(model, tokenizer, [q.prompt for q in qs],
                                       eval_cfg.max_tokens, eval_cfg.batch_size)
        items = [score_item(a, q.reference) for a, q in zip(answers.texts, qs)]
        scores = aggregate(items, answers.texts, [q.reference for q in qs],
                           n_boot=eval_cfg.bootstrap)
        seconds = time.perf_counter() - start
        log.info("validation answers: %d questions, %d tokens at %.0f tok/s, %.1f s: %s",
                 len(qs), answers.generated_tokens, answers.tokens_per_sec, seconds,
                 ", ".join(f"{k} {scores[k]:.3f}" for k in ("rougeL", "f1",
                                                            "citation_precision")))
        out = {f"val_{k}": float(v) for k, v in scores.items()}
        out["val_answer_seconds"] = seconds
        out["val_questions"] = float(len(qs))
        return out

    return answer
