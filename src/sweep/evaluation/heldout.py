"""Held-out evaluation of an adapter against its base model, on the test split.

The test split is the one the trial's own data settings and seed held out: it chose
nothing (no checkpoint, trial, pruning or default was decided on it); it only reports.
For the base model and for the adapter: loss and perplexity over the answer tokens of
every test example, and greedy answers (``eval.max_examples`` of them) scored with
ROUGE-L, BLEU, exact match, token F1 and citation precision/recall; the adapter minus
the base with a paired uncertainty over the same questions.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from sweep.errors import InputError

__all__ = ["Side", "HeldOut", "evaluate_target", "trial_config"]

log = logging.getLogger("sweep.eval")
LOSS = ("test_loss", "test_ppl")


@dataclass
class Side:
    """One model's results on the test split."""

    loss: Any  # sweep.training.scoring.Score
    answers: List[str]
    items: List[Dict[str, float]]
    scores: Dict[str, float]
    tokens_per_sec: float
    seconds: float

    def metrics(self, prefix: str = "") -> Dict[str, float]:
        out = {f"{prefix}test_loss": self.loss.loss, f"{prefix}test_loss_se": self.loss.se,
               f"{prefix}test_ppl": self.loss.ppl,
               f"{prefix}test_ppl_se": self.loss.ppl * self.loss.se}  # delta method
        out.update({f"{prefix}test_{k}": v for k, v in self.scores.items()})
        return out


@dataclass
class HeldOut:
    description: str
    run_id: Optional[str]
    n_test: int
    n_answered: int
    adapter: Side
    base: Optional[Side]
    differences: Dict[str, tuple] = field(default_factory=dict)  # metric -> (diff, se)
    rows: List[Dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def trial_config(target_config: Optional[DictConfig], cfg: DictConfig,
                 overrides: Sequence[str]) -> DictConfig:
    """The config the adapter was trained with (so the test split is the one it held
    out), with this command's overrides on top (``cfg`` is composed with them, so each
    overridden key, or group, is taken from it); ``cfg`` when the target has none."""
    if target_config is None:
        return cfg
    merged = OmegaConf.merge(cfg, target_config)  # keys new since training come from cfg
    with open_dict(merged):
        for override in overrides:
            key = override.split("=", 1)[0]
            delete, key = key.startswith("~"), key.lstrip("+~")
            if key.startswith("hydra.") or key.startswith("hydra/"):
                continue
            key = key.split("@")[0].replace("/", ".")
            if delete:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(merged, parent) if parent else merged
                if node is not None and leaf in node:
                    del node[leaf]
                continue
            value = OmegaConf.select(cfg, key, default=None)
            OmegaConf.update(merged, key, value, merge=False)
    return merged


def _side(model, tokenizer, test_set, qs, typed, label: str) -> Side:
    from sweep.evaluation.answers import fused_adapters, generate_answers
    from sweep.evaluation.metrics import aggregate, score_item
    from sweep.training.cpu_ops import fusable_ops_on_cpu
    from sweep.training.scoring import score

    start = time.perf_counter()
    with fusable_ops_on_cpu(model):
        loss = score(model, test_set, typed.train.batch_size, typed.train.max_seq_length)
    with fused_adapters(model):
        answers = generate_answers(model, tokenizer, [q.prompt for q in qs],
                                   typed.eval.max_tokens, typed.eval.batch_size)
    items = [score_item(a, q.reference) for a, q in zip(answers.texts, qs)]
    scores = aggregate(items, answers.texts, [q.reference for q in qs],
                       n_boot=typed.eval.bootstrap)
    seconds = time.perf_counter() - start
    log.info("%s: test_loss %.4f +- %.4f (ppl %.2f) over %d examples; %d answers, "
             "%d tokens at %.0f tok/s; %.1f s", label, loss.loss, loss.se, loss.ppl,
             loss.n_examples, len(qs), answers.generated_tokens, answers.tokens_per_sec, seconds)
    return Side(loss, answers.texts, items, scores, answers.tokens_per_sec, seconds)


def _differences(base: Side, adapter: Side, qs, n_boot: int) -> Dict[str, tuple]:
    from sweep.evaluation.metrics import METRICS, paired_metric_difference
    from sweep.stats import example_record, paired_loss_difference

    out = {}
    loss = paired_loss_difference(
        example_record(adapter.loss.indexes, adapter.loss.losses, adapter.loss.counts),
        example_record(base.loss.indexes, base.loss.losses, base.loss.counts))
    if loss is not None:
        out["test_loss"] = loss
        out["test_ppl"] = (adapter.loss.ppl - base.loss.ppl, _ppl_difference_se(base, adapter))
    references = [q.reference for q in qs]
    for metric in METRICS:
        out[f"test_{metric}"] = paired_metric_difference(
            base.items, adapter.items, metric, base_predictions=base.answers,
            adapter_predictions=adapter.answers, references=references, n_boot=n_boot)
    return out


def _ppl_difference_se(base: Side, adapter: Side) -> float:
    """Paired standard error of ppl_adapter - ppl_base (delta method: each example's
    contribution to each token-weighted loss, times that model's perplexity)."""
    import numpy as np

    a, b = adapter.loss, base.loss
    if not np.array_equal(a.indexes, b.indexes) or len(a.indexes) < 2:
        return math.nan
    n = a.counts
    r = (a.ppl * n * (a.losses - a.loss) - b.ppl * n * (b.losses - b.loss)) / n.mean()
    return float(math.sqrt((r ** 2).sum() / (len(r) * (len(r) - 1))))


def evaluate_target(cfg: DictConfig, overrides: Sequence[str] = ()) -> HeldOut:
    """Resolve ``cfg.target`` and evaluate it (and its base model) on the test split."""
    from sweep.config import to_typed
    from sweep.config.templates import use
    from sweep.data.batches import tokenize
    from sweep.data.records import load_splits
    from sweep.evaluation.answers import questions
    from sweep.models.loader import load_base
    from sweep.targets import resolve_target
    from sweep.training.lora import load_adapter

    started = time.perf_counter()
    tracking = cfg.mlflow.tracking_uri if cfg.mlflow.enabled else None
    target = resolve_target(cfg.get("target"), tracking)
    typed = to_typed(trial_config(target.config, cfg, overrides))
    splits = load_splits(typed.data, typed.seed)
    if not splits.test:
        raise InputError(f"data.path={typed.data.path}: no test split (data.test_fraction="
                         f"{typed.data.test_fraction}, or a folder without test.jsonl)")
    loaded = load_base(typed.model, typed.cache_dir, typed.seed)
    model, tokenizer = loaded.model, use(loaded.tokenizer, typed.data.template, typed.model.name)
    test_set = tokenize(splits.test, tokenizer, typed.data.mask_prompt)
    limit = typed.eval.max_examples or len(splits.test)
    qs = questions(splits.test[:limit], tokenizer)
    log.info("evaluating %s on the test split of %s: %d examples, %d answered",
             target.description, typed.data.path, len(splits.test), len(qs))
    base = _side(model, tokenizer, test_set, qs, typed, "base model") if typed.eval.base \
        else None
    load_adapter(model, target.adapter_dir, typed.model.name)
    adapter = _side(model, tokenizer, test_set, qs, typed, "adapter")
    result = HeldOut(target.description, target.run_id, len(splits.test), len(qs), adapter,
                     base)
    if base is not None:
        result.differences = _differences(base, adapter, qs, typed.eval.bootstrap)
    for i, q in enumerate(qs):
        row = {"question": q.question, "reference": q.reference,
               "adapter_answer": adapter.answers[i]}
        row.update({f"adapter_{k}": v for k, v in adapter.items[i].items()})
        if base is not None:
            row["base_answer"] = base.answers[i]
            row.update({f"base_{k}": v for k, v in base.items[i].items()})
        result.rows.append(row)
    result.seconds = time.perf_counter() - started
    if typed.eval.log_to_mlflow and tracking and target.run_id:
        _log(tracking, result)
    return result


def _log(tracking_uri: str, result: HeldOut) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    metrics = result.adapter.metrics()
    if result.base is not None:
        metrics.update(result.base.metrics("base_"))
    metrics["test_examples"], metrics["test_answered"] = result.n_test, result.n_answered
    for name, (difference, se) in result.differences.items():
        metrics[f"delta_{name}"], metrics[f"delta_{name}_se"] = difference, se
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(result.run_id, metrics=[
        Metric(k, float(v), now, 0) for k, v in metrics.items() if not math.isnan(float(v))])
    columns = {key: [row.get(key) for row in result.rows] for key in result.rows[0]}
    # log_table appends to an existing file: one file per evaluation, the tag names it
    now = time.time()
    name = (f"eval/answers-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(now))}"
            f"-{int(now * 1000) % 1000:03d}.json")
    client.log_table(result.run_id, data=columns, artifact_file=name)
    client.set_tag(result.run_id, "sweep.eval_table", name)
    client.set_tag(result.run_id, "sweep.evaluated", "test split")


def summary(result: HeldOut) -> str:
    """Base vs adapter side by side, with the difference and its standard error."""
    lines = [f"held-out evaluation of {result.description}: {result.n_test} test examples "
             f"(loss), {result.n_answered} answered; {result.seconds:.0f} s"]
    names = ["test_loss", "test_ppl", "test_rougeL", "test_bleu", "test_exact_match", "test_f1",
             "test_citation_precision", "test_citation_recall"]
    a = result.adapter.metrics()
    b = result.base.metrics() if result.base is not None else {}
    lines.append(f"{'metric':<24}{'base':>23} {'adapter':>23} {'adapter - base':>24}")
    for name in names:
        se = "_se"

        def cell(values: Dict[str, float]) -> str:
            if name not in values:
                return "-"
            value = values[name]
            spread = values.get(f"{name}_se") if se else None
            text = f"{value:.2f}" if name == "test_ppl" else f"{value:.4f}"
            return text + (f" +- {spread:.4f}" if spread is not None
                           and math.isfinite(spread) else "")
        diff = result.differences.get(name)
        change = "-" if not diff else (f"{diff[0]:+.2f}" if not math.isfinite(diff[1])
                                       else f"{diff[0]:+.4f} +- {diff[1]:.4f}")
        lines.append(f"{name:<24}{cell(b):>23} {cell(a):>23} {change:>24}")
    return "\n".join(lines)
