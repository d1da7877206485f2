"""The README and the pages under docs/ hold together: every relative link and image points
at a file that exists (and an anchor at a heading of that page, by GitHub's slug rules), the
README stays short, and it links every page."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
MAX_README_LINES = 150

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), with an optional "title"; text may hold code spans
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str) -> List[str]:
    """The lines outside fenced code blocks (a ``# comment`` in a bash block is no heading)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(line)
    return lines


def slug(title: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation other than
    hyphens and underscores dropped, each space a hyphen."""
    text = CODE_SPAN.sub(lambda m: m.group(2), title)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text
    text = re.sub(r"(\*\*|\*|~~)", "", text)  # emphasis markers
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    seen: Dict[str, int] = {}
    result = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group("title"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
    return result


def links(page: Path) -> List[Tuple[int, str]]:
    """(line number, target) of every link and image outside code."""
    found, in_fence = [], False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        # a code span's text is not a link target, but a link's text may be a code span
        plain = CODE_SPAN.sub(lambda m: "x" * len(m.group(0)) if "](" in m.group(0) else m.group(0), line)
        found.extend((number, m.group("target")) for m in LINK.finditer(plain))
    return found


def broken_links(page: Path) -> List[str]:
    problems = []
    for number, target in links(page):
        where = f"{page.relative_to(ROOT)}:{number}: ({target})"
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        if ROOT not in dest.parents and dest != ROOT:
            problems.append(f"{where} points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where} names a file that does not exist")
            continue
        if anchor:
            if dest.suffix != ".md" or dest.is_dir():
                problems.append(f"{where} has an anchor into a file that is not a Markdown page")
            elif anchor not in anchors(dest):
                problems.append(f"{where} names no heading of {dest.relative_to(ROOT)} "
                                f"(its anchors: {sorted(anchors(dest))})")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_and_image_resolves(page: Path) -> None:
    assert not broken_links(page), "\n".join(broken_links(page))


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines, at most {MAX_README_LINES}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set()
    for _, target in links(README):
        path_part = target.partition("#")[0]
        if path_part and not EXTERNAL.match(target):
            linked.add((ROOT / unquote(path_part)).resolve())
    missing = [str(p.relative_to(ROOT)) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_each_page_starts_with_a_title() -> None:
    untitled = [str(p.relative_to(ROOT)) for p in PAGES
                if not p.read_text(encoding="utf-8").startswith("# ")]
    assert not untitled, f"pages that do not start with a '# Title': {untitled}"


def test_the_checks_catch_what_they_are_for(tmp_path: Path, monkeypatch) -> None:
    """The checker itself: a missing file, a missing anchor and a link into code are told apart."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Watching a study: `sweep-status`\n\n"
                                            "```bash\n# not a heading\n[x](nowhere.md)\n```\n")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md#watching-a-study-sweep-status) `[code](gone.md)`\n"
                    "[bad anchor](docs/a.md#not-a-heading) ![img](docs/missing.png)\n"
                    "[web](https://example.org/x) [self](#nothing)\n")
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "README.md:2: (docs/a.md#not-a-heading) names no heading" in problems[0]
    assert "docs/missing.png" in problems[1] and "does not exist" in problems[1]
    assert "(#nothing) names no heading" in problems[2]
    assert slug("One run's results") == "one-runs-results"
    assert slug("`sweep-export`") == "sweep-export"
