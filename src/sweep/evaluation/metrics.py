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
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "MEAN_METRICS", "METRICS", "Citation", "aggregate", "citation_counts",
    "corpus_bleu", "exact_match", "extract_citations", "normalize_answer",
    "paired_difference", "rouge_l", "score_item", "sentence_bleu", "token_f1",
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


# --- Statute citations ------------------------------------------------------------------

# Canonical short names; each pattern lists the long names before the abbreviations.
_ACTS = (
    ("IPC", r"Indian\s+Penal\s+Code|Penal\s+Code|I\.?\s?P\.?\s?C\.?"),
    ("CrPC", r"Code\s+of\s+Criminal\s+Procedure|Criminal\s+Procedure\s+Code|Cr\.?\s?P\.?\s?C\.?"),
    ("BNSS", r"Bharatiya\s+Nagarik\s+Suraksha\s+Sanhita|BNSS"),
    ("BNS", r"Bharatiya\s+Nyaya\s+Sanhita|BNS"),
    ("BSA", r"Bharatiya\s+Sakshya\s+Adhiniyam|BSA"),
    ("IEA", r"(?:Indian\s+)?Evidence\s+Act|IEA"),
    ("CPC", r"Code\s+of\s+Civil\s+Procedure|Civil\s+Procedure\s+Code|C\.?\s?P\.?\s?C\.?"),
    ("Constitution", r"(?:Indian\s+)?Constitution(?:\s+of\s+India)?"),
)
_KNOWN = "|".join(f"(?:{p})" for _, p in _ACTS)
# Any other "... Act" is kept under its own name, but only after "of/under the".
_OTHER = (r"[A-Z][\w'-]*(?:\s+(?:[A-Z][\w'-]*|\([A-Z][\w ]*\)"
          r"|of|the|and|for|from|on|to|in|with|against))*?\s+Act")
_NUM = r"\d+(?:-?[A-Z]{1,3})?(?!\w)"  # 302, 51A, 376AB, 304-B
_CLAUSE = r"\((?:\d+[A-Z]?|[a-z]{1,4})\)"  # (1), (3A), (a), (iv)
_ITEM = rf"(?:{_NUM}|{_CLAUSE})(?:{_CLAUSE})*"
# A list goes on only to another number, never to a count ("Section 167(2), 60 days").
_SEP = r"(?:\s*,\s*(?:and\s+|or\s+)?|\s+(?:and|or|to|&)\s+|\s*[-\u2013/]\s*)"
_UNIT = r"\s+(?:days?|weeks?|months?|years?|hours?|per\b|%)"
_NEXT = rf"{_SEP}{_ITEM}(?!(?:{_SEP}{_ITEM})*{_UNIT})"
_CITE = re.compile(
    rf"(?:(?<![\w.])(?i:(?P<pre>{_KNOWN}))\s+)?"
    rf"(?<![\w.'\u2019])(?i:(?P<key>articles?|arts?\.|sections?|secs?\.|ss?\.|u/s\.?))\s*"
    rf"(?P<items>{_ITEM}(?:{_NEXT})*)"
    rf"(?:,?\s+(?i:(?P<post>{_KNOWN}))(?![A-Za-z])"
    rf"|\s+(?:of|under)\s+(?:the\s+)?(?:(?i:(?P<of>{_KNOWN}))(?![A-Za-z])|(?P<other>{_OTHER})))?"
)


@dataclass(frozen=True)
class Citation:
    """A statute reference: "article"/"section", its number ("21", "302A"), the act
    (short name, e.g. "IPC", "Constitution"; None when the text names none) and the clause
    ("(1)(a)"; None when not given)."""

    kind: str
    number: str
    act: str | None = None
    clause: str | None = None

    def matches(self, other: Citation) -> bool:
        """Same kind and number; acts and clauses agree where both are given, and a clause
        matches its sub-clauses ("Article 19" ~ "Article 19(1)" ~ "19(1)(a)", not "19(2)")."""
        return (self.kind == other.kind and self.number == other.number
                and (self.act is None or other.act is None or self.act == other.act)
                and (_prefix(self.clause, other.clause) or _prefix(other.clause, self.clause)))

    def __str__(self) -> str:
        name = f"{self.kind.capitalize()} {self.number}{self.clause or ''}"
        return f"{name} {self.act}" if self.act else name


def _prefix(short: str | None, long: str | None) -> bool:
    return short is None or (long is not None and long.startswith(short))


def _act_name(text: str) -> str:
    for name, pattern in _ACTS:
        if re.fullmatch(pattern, text, flags=re.I):
            return name
    return " ".join(text.split())


def extract_citations(text: str) -> set[Citation]:
    """Article and section references in ``text``, with act names normalised.

    A list ("Sections 299 and 300 IPC", "IPC Sections 378 and 379") shares its act; a range
    ("Sections 299 to 304") gives its two ends, since "354 to 354D" cannot be enumerated. A
    citation that another one in the same text refines (bare "Section 302" beside "Section
    302 of the IPC", "Article 21" beside "Article 21(1)") is dropped, so it counts once.
    """
    found: set[Citation] = set()
    for m in _CITE.finditer(text):
        kind = "article" if m["key"].lower().startswith("art") else "section"
        act_text = m["pre"] or m["post"] or m["of"] or m["other"]
        act = _act_name(act_text) if act_text else None
        number, clause = "", ""
        for item in re.finditer(rf"({_NUM})?((?:{_CLAUSE})*)", m["items"]):
            if item[1]:
                number, clause = item[1].replace("-", "").upper(), item[2]
            elif item[2]:  # "Article 19(1)(a) and (g)": a sibling of the last clause
                clause = re.sub(r"\([^()]*\)$", "", clause) + item[2]
            else:
                continue
            found.add(Citation(kind, number, act, clause or None))
    return {c for c in found if not any(d != c and _refines(d, c) for d in found)}


def _refines(d: Citation, c: Citation) -> bool:
    """``d`` says everything ``c`` says, and more."""
    return (d.kind == c.kind and d.number == c.number and c.act in (None, d.act)
            and _prefix(c.clause, d.clause))


def citation_counts(prediction: str, reference: str) -> tuple[int, int, int, int]:
    """(predicted citations matching a reference one, predicted citations,
    reference citations matched by a predicted one, reference citations).

    A citation the reference does not make counts against precision (a hallucinated
    citation); corpus precision and recall are ratios of the summed counts.
    """
    pred, ref = extract_citations(prediction), extract_citations(reference)
    matched_pred = sum(any(p.matches(r) for r in ref) for p in pred)
    matched_ref = sum(any(r.matches(p) for p in pred) for r in ref)
    return matched_pred, len(pred), matched_ref, len(ref)


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


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(np.mean(values)), se


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
            out[metric], out[f"{metric}_se"] = _mean_se(np.array([i[metric] for i in items]))
            continue
        stats = _stats(metric, items, predictions, references)
        out[metric] = _from_sums(metric, stats.sum(axis=0))
        out[f"{metric}_se"] = _finite_se(np.array([_from_sums(metric, s)
                                                   for s in weights @ stats]))
    return out


def paired_difference(base_items: Sequence[Mapping[str, float]],
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
        return _mean_se(np.array(diff, float))
    base = _stats(metric, base_items, base_predictions, references)
    adapter = _stats(metric, adapter_items, adapter_predictions, references)
    weights = _weights(n, n_boot, seed)
    boot = [_from_sums(metric, a) - _from_sums(metric, b)
            for a, b in zip(weights @ adapter, weights @ base)]
    point = _from_sums(metric, adapter.sum(axis=0)) - _from_sums(metric, base.sum(axis=0))
    return point, _finite_se(np.array(boot))
