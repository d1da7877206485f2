"""Statute citations in legal answers: "Article 21(1)", "Sections 299 and 300 IPC",
"Section 173 of the BNSS", parsed with the acts' names normalised, and counted against a
reference answer's (a citation the reference does not make counts against precision:
seed 001's "hallucinated citations"). No general metric library has this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Citation", "citation_counts", "extract_citations"]


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
