"""Held-out metrics on fixed strings, against values computed by hand (in the comments)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from sweep.evaluation.metrics import (
    METRICS, Citation, aggregate, citation_counts, corpus_bleu, exact_match, extract_citations,
    normalize_answer, paired_metric_difference, rouge_l, score_item, sentence_bleu, token_f1,
)

ROOT = Path(__file__).resolve().parents[2]
QA = ROOT / "src" / "sweep" / "data" / "legal_qa" / "indian_law_qa.jsonl"
METRICS_PY = ROOT / "src" / "sweep" / "evaluation" / "metrics.py"


@pytest.mark.parametrize("text, expected", [
    ("The Cat, sat!", "cat sat"),
    ("  An   apple a day  ", "apple day"),
    ("Article 21(1).", "article 211"),  # punctuation goes, digits join (SQuAD's behaviour)
    ("Theatre", "theatre"),  # articles only as whole words
])
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize("pred, ref, expected", [
    ("The cat.", "cat", 1.0),
    ("cat", "cats", 0.0),
    ("", "", 1.0),
])
def test_exact_match(pred: str, ref: str, expected: float) -> None:
    assert exact_match(pred, ref) == expected


@pytest.mark.parametrize("pred, ref, expected", [
    # [cat, sat] vs [cat, sat, down]: P = 2/2, R = 2/3, F1 = 2*(1*2/3)/(1+2/3) = 0.8
    ("the cat sat", "a cat sat down", 0.8),
    # common counts min(cat 1,1) + min(dog 1,2) = 2: P = R = 2/3
    ("cat cat dog", "cat dog dog", 2 / 3),
    ("dog", "cat", 0.0),
    ("", "cat", 0.0),
    ("the", "a", 1.0),  # both normalise to nothing
])
def test_token_f1(pred: str, ref: str, expected: float) -> None:
    assert token_f1(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("pred, ref, expected", [
    # 6 tokens each, LCS "the cat on the mat" = 5: P = R = F = 5/6
    ("the cat sat on the mat", "the cat lay on the mat", 5 / 6),
    # LCS "police arrest(ed) man" = 3: P = 3/4, R = 3/6, F = 2*(3/8)/(5/4) = 0.6
    ("police arrested the man", "the police arrested a man yesterday", 0.6),
    ("running dogs", "run dog", 1.0),  # Porter stemming: running -> run, dogs -> dog
    ("", "run dog", 0.0),
])
def test_rouge_l(pred: str, ref: str, expected: float) -> None:
    assert rouge_l(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("pred, ref, expected", [
    ("Article 21 protects life.", "Article 21 protects life.", 100.0),
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths: 100 * (1/12) ** (1/4)
    ("the cat sat on the mat", "the cat sat on a mat", 100 * (1 / 12) ** 0.25),
    # 1-grams 1/2, 2-grams 0/1 -> exp smoothing 100/(2*1) = 50%, effective order 2: 50
    ("the cat", "the dog", 50.0),
])
def test_sentence_bleu(pred: str, ref: str, expected: float) -> None:
    assert sentence_bleu(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("preds, refs, expected", [
    (["a b c d e", "x y z w"], ["a b c d e", "x y z w"], 100.0),
    # summed: 1-grams 9/10, 2-grams 6/8, 3-grams 4/6, 4-grams 2/4 -> 100 * 0.225 ** (1/4);
    # the mean of the sentence BLEUs would be (53.73 + 100) / 2 = 76.9
    (["the cat sat on the mat", "hello there general kenobi"],
     ["the cat sat on a mat", "hello there general kenobi"], 100 * 0.225 ** 0.25),
    # all precisions 1, brevity penalty exp(1 - 6/4)
    (["the cat sat on"], ["the cat sat on the mat"], 100 * math.exp(-0.5)),
])
def test_corpus_bleu(preds: list[str], refs: list[str], expected: float) -> None:
    assert corpus_bleu(preds, refs) == pytest.approx(expected)


def test_corpus_bleu_equals_sacrebleu_on_the_data_set() -> None:
    records = [json.loads(line) for line in QA.read_text().splitlines()[:60]]
    preds, refs = [r["question"] for r in records], [r["answer"] for r in records]
    assert corpus_bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)


def _c(kind: str, number: str, act: str | None = None, clause: str | None = None) -> Citation:
    return Citation(kind, number, act, clause)


A, S = "article", "section"


@pytest.mark.parametrize("text, expected", [
    ("Article 21 protects life.", {_c(A, "21")}),
    ("Under Article 21(1), ...", {_c(A, "21", clause="(1)")}),
    ("Articles 14, 19 and 21 together", {_c(A, "14"), _c(A, "19"), _c(A, "21")}),
    ("See Art. 21 and Arts. 32 and 226.", {_c(A, "21"), _c(A, "32"), _c(A, "226")}),
    ("Article 21 of the Constitution of India", {_c(A, "21", "Constitution")}),
    ("Article 19(1)(a) and (g)", {_c(A, "19", clause="(1)(a)"), _c(A, "19", clause="(1)(g)")}),
    ("Section 302 IPC", {_c(S, "302", "IPC")}),
    ("Section 302 of the IPC", {_c(S, "302", "IPC")}),
    ("section 302 of the Indian Penal Code, 1860", {_c(S, "302", "IPC")}),
    ("Sections 299 and 300 IPC", {_c(S, "299", "IPC"), _c(S, "300", "IPC")}),
    ("Section 173 BNSS", {_c(S, "173", "BNSS")}),
    ("Section 173 of the Bharatiya Nagarik Suraksha Sanhita", {_c(S, "173", "BNSS")}),
    ("Section 103 of the Bharatiya Nyaya Sanhita", {_c(S, "103", "BNS")}),
    ("Section 63 of the Bharatiya Sakshya Adhiniyam", {_c(S, "63", "BSA")}),
    ("Section 27 of the Evidence Act", {_c(S, "27", "IEA")}),
    ("Section 65B of the Indian Evidence Act, 1872", {_c(S, "65B", "IEA")}),
    ("Sec. 438 Cr.P.C.", {_c(S, "438", "CrPC")}),
    ("Section 154 of the Code of Criminal Procedure", {_c(S, "154", "CrPC")}),
    ("Section 9 of the Code of Civil Procedure", {_c(S, "9", "CPC")}),
    ("u/s 302/34 IPC", {_c(S, "302", "IPC"), _c(S, "34", "IPC")}),
    ("Section 304-B, IPC", {_c(S, "304B", "IPC")}),
    # the data set's style: an act before the section, one act for a whole list
    ("Section 303 of the BNS, corresponding to IPC Sections 378 and 379",
     {_c(S, "303", "BNS"), _c(S, "378", "IPC"), _c(S, "379", "IPC")}),
    ("Sections 376(3), 376AB and 376DB of the IPC",
     {_c(S, "376", "IPC", "(3)"), _c(S, "376AB", "IPC"), _c(S, "376DB", "IPC")}),
    ("Articles 5 to 11", {_c(A, "5"), _c(A, "11")}),  # a range gives its two ends
    ("Section 35(3) to (6) of the BNSS", {_c(S, "35", "BNSS", "(3)"), _c(S, "35", "BNSS", "(6)")}),
    ("Section 8(4) of the Representation of the People Act, 1951",
     {_c(S, "8", "Representation of the People Act", "(4)")}),
    # a refined citation absorbs the plain one in the same text
    ("Section 300 of the IPC ... Section 300 says", {_c(S, "300", "IPC")}),
    ("Article 21 and Article 21(1)", {_c(A, "21", clause="(1)")}),
    # counts after a citation are not citations
    ("Under Section 167(2), 60 or 90 days", {_c(S, "167", clause="(2)")}),
    ("The accused's. 5 days later; Part III; the BNS provides", set()),
])
def test_extract_citations(text: str, expected: set[Citation]) -> None:
    assert extract_citations(text) == expected


@pytest.mark.parametrize("a, b, expected", [
    (_c(S, "302"), _c(S, "302", "IPC"), True),  # an unknown act matches any act
    (_c(S, "302", "BNS"), _c(S, "302", "IPC"), False),
    (_c(S, "302", "IPC"), _c(A, "302"), False),
    (_c(A, "21", clause="(1)"), _c(A, "21"), True),
    (_c(A, "19", clause="(1)"), _c(A, "19", clause="(1)(a)"), True),
    (_c(A, "19", clause="(1)(a)"), _c(A, "19", clause="(2)"), False),
    (_c(A, "19", clause="(1)"), _c(A, "19", clause="(10)"), False),
    (_c(A, "21"), _c(A, "21A"), False),
])
def test_citation_matching(a: Citation, b: Citation, expected: bool) -> None:
    assert a.matches(b) is expected and b.matches(a) is expected


@pytest.mark.parametrize("pred, ref, expected", [
    # Section 34 is hallucinated: precision 1/2, recall 1/1
    ("Murder is punished under Section 302 IPC and Section 34 IPC.",
     "Section 302 of the Indian Penal Code punishes murder.", (1, 2, 1, 1)),
    ("Section 302 punishes murder.", "Section 302 IPC punishes murder.", (1, 1, 1, 1)),
    ("Section 103 BNS punishes murder.", "Section 103 IPC", (0, 1, 0, 1)),
    ("Articles 14 and 21.", "Articles 14, 19 and 21.", (2, 2, 2, 3)),
    ("No citation here.", "Article 21.", (0, 0, 0, 1)),
])
def test_citation_counts(pred: str, ref: str, expected: tuple[int, int, int, int]) -> None:
    assert citation_counts(pred, ref) == expected


REFS = ["Section 302 IPC punishes murder.", "Article 21 protects life.",
        "The President appoints the CJI."]
PREDS = ["Section 302 IPC and Section 34 IPC punish murder.", "Article 21 protects life.",
         "The Prime Minister appoints the CJI."]


def test_score_item_keys() -> None:
    item = score_item(PREDS[1], REFS[1])
    assert item == {"rougeL": 1.0, "bleu": pytest.approx(100.0), "exact_match": 1.0, "f1": 1.0,
                    "citations_predicted_matched": 1, "citations_predicted": 1,
                    "citations_reference_matched": 1, "citations_reference": 1}


def test_aggregate_by_hand() -> None:
    out = aggregate([score_item(p, r) for p, r in zip(PREDS, REFS)], PREDS, REFS)
    assert set(out) == set(METRICS) | {f"{m}_se" for m in METRICS}
    # EM 0, 1, 0: mean 1/3, sd sqrt(1/3), se sqrt(1/3)/sqrt(3) = 1/3
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["exact_match_se"] == pytest.approx(1 / 3)
    # F1: 9 vs 5 tokens with 4 common -> 4/7; 1; 4 vs 3 tokens with 2 common -> 4/7.
    # Mean 5/7; deviations -1/7, 2/7, -1/7: sd sqrt(3)/7, se 1/7
    assert out["f1"] == pytest.approx(5 / 7)
    assert out["f1_se"] == pytest.approx(1 / 7)
    # citations (matched/predicted, matched/reference): 1/2 1/1; 1/1 1/1; 0/0 0/0
    assert out["citation_precision"] == pytest.approx(2 / 3)
    assert out["citation_recall"] == pytest.approx(1.0)
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDS, [REFS]).score)
    assert out["bleu_se"] > 0 and out["citation_precision_se"] > 0
    assert aggregate([score_item(p, r) for p, r in zip(PREDS, REFS)], PREDS, REFS) == out


def test_precision_is_nan_when_nothing_is_cited() -> None:
    preds = ["murder is punished", "life is protected", "the president appoints"]
    out = aggregate([score_item(p, r) for p, r in zip(preds, REFS)], preds, REFS)
    assert math.isnan(out["citation_precision"]) and math.isnan(out["citation_precision_se"])
    assert out["citation_recall"] == 0.0


def _cited(matched: list[int]) -> list[dict[str, float]]:
    return [{"citations_predicted_matched": m, "citations_predicted": 1,
             "citations_reference_matched": m, "citations_reference": 1} for m in matched]


def test_bootstrap_se_of_a_ratio_matches_the_binomial_se() -> None:
    # One citation per answer: precision is a mean of 0/1, se about sqrt(p(1-p)/n)
    items = [{**c, "rougeL": 0.0, "exact_match": 0.0, "f1": 0.0}
             for c in _cited([1, 0, 0] * 100)]
    texts = ["x"] * len(items)
    out = aggregate(items, texts, texts, n_boot=2000)
    assert out["citation_precision"] == pytest.approx(1 / 3)
    assert out["citation_precision_se"] == pytest.approx(math.sqrt(2 / 9 / 300), rel=0.1)


def test_paired_metric_difference_of_a_mean() -> None:
    base = [{"f1": 0.0}, {"f1": 0.5}, {"f1": 1.0}]
    adapter = [{"f1": 1.0}, {"f1": 0.5}, {"f1": 1.0}]
    # differences 1, 0, 0: mean 1/3, se 1/3 (as for EM above)
    assert paired_metric_difference(base, adapter, "f1") == pytest.approx((1 / 3, 1 / 3))


def test_paired_bootstrap_resamples_both_systems_together() -> None:
    base = _cited([1, 0, 1, 0, 1, 1, 0, 1])
    diff, se = paired_metric_difference(base, base, "citation_recall")
    assert (diff, se) == (0.0, 0.0)  # an unpaired bootstrap would give se > 0
    adapter = _cited([1, 1, 1, 0, 1, 1, 1, 1])
    diff, se = paired_metric_difference(base, adapter, "citation_precision", n_boot=500, seed=1)
    assert diff == pytest.approx(7 / 8 - 5 / 8) and 0 < se < 0.25


def test_paired_bleu_needs_the_strings() -> None:
    base = ["the cat sat on"]
    adapter = ["the cat sat on the mat"]
    refs = ["the cat sat on the mat"]
    items = [{}]
    diff, _ = paired_metric_difference(items, items, "bleu", base_predictions=base,
                                adapter_predictions=adapter, references=refs)
    assert diff == pytest.approx(100 - 100 * math.exp(-0.5))
    with pytest.raises(ValueError, match="strings"):
        paired_metric_difference(items, items, "bleu")
    with pytest.raises(ValueError, match="allowed: rougeL, bleu"):
        paired_metric_difference(items, items, "rouge")
    with pytest.raises(ValueError, match="equally long"):
        paired_metric_difference(items, items * 2, "f1")
    with pytest.raises(ValueError, match="non-empty"):
        aggregate([], [], [])


def test_every_citation_in_the_data_set_is_parsed() -> None:
    records = [json.loads(line) for line in QA.read_text().splitlines()]
    keyword = re.compile(r"\b(?:Articles?|Sections?)\s+\d")
    for record in records:
        answer = record["answer"]
        n_keywords = len(keyword.findall(answer))
        assert bool(extract_citations(answer)) == (n_keywords > 0), answer
        matched, n, _, _ = citation_counts(answer, answer)
        assert matched == n
    assert sum(bool(extract_citations(r["answer"])) for r in records) > 600


def test_metrics_work_offline(tmp_path: Path) -> None:
    # No network and no nltk data directory: rouge_score and sacrebleu must still score.
    # The module is loaded from its file, so `import sweep` (BLAS set-up, cache) is skipped.
    code = ("import importlib.util, socket, sys\n"
            "def refuse(*a, **k): raise OSError('network access attempted')\n"
            "socket.socket.connect = refuse\n"
            f"spec = importlib.util.spec_from_file_location('metrics', {str(METRICS_PY)!r})\n"
            "m = sys.modules['metrics'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            "print(m.rouge_l('running dogs', 'run dog'), m.sentence_bleu('a b c d', 'a b c d'))\n")
    env = {**os.environ, "NLTK_DATA": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    assert [float(x) for x in result.stdout.split()] == pytest.approx([1.0, 100.0])
