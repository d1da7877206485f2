"""Held-out answer metrics: pure functions of strings, then corpus values with uncertainty.

Per question: ROUGE-L, sentence BLEU, SQuAD exact match and token F1, and statute-citation
counts. Per corpus: means with standard errors over questions; BLEU and the citation ratios
are computed from summed per-question statistics (as sacrebleu does), with bootstrap
standard errors. Nothing downloads at run time: rouge_score needs only nltk's Porter stemmer
(code, no data) and sacrebleu's default 13a tokenizer is built in.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from sweep.stats import mean_se

from sweep.evaluation.citations import Citation, citation_counts, extract_citations

__all__ = [
    "MEAN_METRICS", "METRICS", "Citation", "aggregate", "citation_counts",
    "corpus_bleu", "exact_match", "extract_citations", "normalize_answer",
    "paired_metric_difference", "rouge_l", "score_item", "sentence_bleu", "token_f1",
]

METRICS = ("rougeL", "bleu", "exact_match", "f1", "citation_precision", "citation_recall")
MEAN_METRICS = ("rougeL", "exact_match", "f1")  # corpus value = mean over questions
_CITATION_KEYS = ("citations_predicted_matched", "citations_predicted",
                  "citations_reference_matched", "citations_reference")


# --- SQuAD-style answer matching -------------------------------------------------------

def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 over normalised tokens; both empty -> 1.0, one empty -> 0.0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    # 2PR / (P + R) with P = common/|pred| and R = common/|ref|, without dividing by zero.
    return 2 * common / (len(pred) + len(ref))


# --- ROUGE-L and BLEU (library implementations, loaded once) ----------------------------

@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer  # imports nltk's stemmer: slow once, so lazily

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@lru_cache(maxsize=1)
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    # effective_order only changes sentence scores; the n-gram counts are the same.
    return BLEU(effective_order=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge_score, Porter stemming); 0.0 if either side has no tokens."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu sentence BLEU (13a tokens, exp smoothing, effective order), 0-100 scale."""
    return float(_bleu().sentence_score(prediction, [reference]).score)


def _bleu_stats(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-item BLEU statistics: sys_len, ref_len, 4 matched and 4 total n-gram counts."""
    scores = [_bleu().sentence_score(p, [r]) for p, r in zip(predictions, references)]
    return np.array([[s.sys_len, s.ref_len, *s.counts, *s.totals] for s in scores], float)


def _bleu_from_sums(sums: np.ndarray) -> float:
    from sacrebleu.metrics import BLEU

    s = [int(round(x)) for x in sums]
    # sacrebleu.corpus_bleu's defaults: exp smoothing, full order.
    return float(BLEU.compute_bleu(s[2:6], s[6:10], s[0], s[1], smooth_method="exp").score)


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU from all n-gram counts (not a mean of sentence BLEUs), 0-100 scale."""
    _same_length(predictions=predictions, references=references)
    return _bleu_from_sums(_bleu_stats(predictions, references).sum(axis=0))


# --- Per item, corpus, and the adapter-minus-base difference ------------------------------

def score_item(prediction: str, reference: str) -> dict[str, float]:
    """All per-question values: rougeL, bleu (sentence, 0-100), exact_match, f1 and the four
    citation counts (keys ``citations_predicted_matched``, ``citations_predicted``,
    ``citations_reference_matched``, ``citations_reference``)."""
    scores = {"rougeL": rouge_l(prediction, reference),
              "bleu": sentence_bleu(prediction, reference),
              "exact_match": exact_match(prediction, reference),
              "f1": token_f1(prediction, reference)}
    return {**scores, **dict(zip(_CITATION_KEYS, citation_counts(prediction, reference)))}


def _same_length(**seqs: Sequence[Any] | None) -> int:
    lengths = {name: len(s) for name, s in seqs.items() if s is not None}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"need equally long, non-empty lists; got lengths {lengths}")
    return next(iter(lengths.values()))


def _stats(metric: str, items: Sequence[Mapping[str, float]],
           predictions: Sequence[str] | None, references: Sequence[str] | None) -> np.ndarray:
    """Per-item columns whose sums give a corpus metric."""
    if metric == "bleu":
        if predictions is None or references is None:
            raise ValueError("metric 'bleu' needs the prediction and reference strings")
        return _bleu_stats(predictions, references)
    cols = _CITATION_KEYS[:2] if metric == "citation_precision" else _CITATION_KEYS[2:]
    return np.array([[item[c] for c in cols] for item in items], float).reshape(-1, 2)


def _from_sums(metric: str, sums: np.ndarray) -> float:
    if metric == "bleu":
        return _bleu_from_sums(sums)
    return float(sums[0] / sums[1]) if sums[1] > 0 else math.nan  # nothing cited: undefined


def _weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap resamples of the questions, as how often each index was drawn."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot)


def _finite_se(values: np.ndarray) -> float:
    # Resamples where a ratio is undefined (no citation drawn) are left out.
    finite = values[np.isfinite(values)]
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else math.nan


def aggregate(items: Sequence[Mapping[str, float]], predictions: Sequence[str],
              references: Sequence[str], *, n_boot: int = 1000, seed: int = 0
              ) -> dict[str, float]:
    """Corpus values ``rougeL``, ``bleu``, ``exact_match``, ``f1``, ``citation_precision``,
    ``citation_recall``, each with ``<name>_se``, the standard error over questions.

    Means get the usual standard error; corpus BLEU (0-100, from all strings) and the
    citation ratios a bootstrap over questions with a fixed seed. Precision is NaN when no
    answer cited anything, recall when no reference did.
    """
    weights = _weights(_same_length(items=items, predictions=predictions,
                                    references=references), n_boot, seed)
    out: dict[str, float] = {}
    for metric in METRICS:
        if metric in MEAN_METRICS:
            out[metric], out[f"{metric}_se"] = mean_se(np.array([i[metric] for i in items]))
            continue
        stats = _stats(metric, items, predictions, references)
        out[metric] = _from_sums(metric, stats.sum(axis=0))
        out[f"{metric}_se"] = _finite_se(np.array([_from_sums(metric, s)
                                                   for s in weights @ stats]))
    return out


def paired_metric_difference(base_items: Sequence[Mapping[str, float]],
                      adapter_items: Sequence[Mapping[str, float]], metric: str, *,
                      base_predictions: Sequence[str] | None = None,
                      adapter_predictions: Sequence[str] | None = None,
                      references: Sequence[str] | None = None,
                      n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Adapter minus base on the same questions, with its standard error.

    Means: the mean and standard error of the per-question differences. Corpus metrics: the
    difference of corpus values, and a paired bootstrap (each resample of question indexes is
    applied to both systems). ``bleu`` needs the three string lists.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    n = _same_length(base=base_items, adapter=adapter_items, base_predictions=base_predictions,
                     adapter_predictions=adapter_predictions, references=references)
    if metric in MEAN_METRICS:
        diff = [a[metric] - b[metric] for a, b in zip(adapter_items, base_items)]
        return mean_se(np.array(diff, float))
    base = _stats(metric, base_items, base_predictions, references)
    adapter = _stats(metric, adapter_items, adapter_predictions, references)
    weights = _weights(n, n_boot, seed)
    boot = [_from_sums(metric, a) - _from_sums(metric, b)
            for a, b in zip(weights @ adapter, weights @ base)]
    point = _from_sums(metric, adapter.sum(axis=0)) - _from_sums(metric, base.sum(axis=0))
    return point, _finite_se(np.array(boot))
