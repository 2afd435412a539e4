"""Every ``teams.md §X.Y`` / ``ecosystem.md §X.Y`` citation in the project resolves to a heading of docs/teams.md /
docs/ecosystem.md. Pure text: no TensorFlow, no Keras."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = {"teams": ROOT / "docs" / "teams.md", "ecosystem": ROOT / "docs" / "ecosystem.md"}
#: Where citations are looked for (the code, its tests and benchmarks, and the user documentation).
SCAN_DIRS = ("hpa_zoo", "zoo_models", "tfds_hpa", "benchmarks", "tests", "docs")
SCAN_FILES = ("README.md",)
SUFFIXES = {".py", ".json", ".sh", ".md", ".yml", ".yaml", ".cfg", ".toml", ".txt"}
SELF = Path(__file__).resolve()

_NUM = r"\d+(?:\.\d+)*"
#: ``teams.md §1.3``, ``docs/teams.md §1.1-1.2, §1.6``, ``teams.md §3.4/§3.5``, ``teams.md section 3.5``; the file
#: name may end one line and the section start the next (comment markers in between).
_CITED = re.compile(rf"\b(teams|ecosystem)\.md[\s#:*`'\"]*(?:§\s*|section\s+)({_NUM}(?:\s*(?:,|/|-|–|\band\b)\s*"
                    rf"(?:§\s*)?{_NUM})*)")
#: A bare ``§4.1`` (the file named earlier in the same file, or the doc itself).
_BARE = re.compile(rf"(?<![\w.])§\s*({_NUM})")
_HEADING = re.compile(rf"^#{{1,6}}\s+({_NUM})\.?\s", re.M)


def headings(text: str) -> list[str]:
    """Section numbers of the markdown headings (``## 1. Team 1`` -> ``1``, ``### 1.3 Loss`` -> ``1.3``)."""
    return _HEADING.findall(text)


def citations(text: str, own_doc: str | None = None) -> list[tuple[str, str, int]]:
    """(doc, section, line) for every section cited in `text`.

    Refs after ``teams.md`` / ``ecosystem.md`` belong to that doc. A bare ``§X`` belongs to `own_doc` when given
    (a doc citing itself); otherwise to the doc(s) the text names, ``"either"`` when it names both, and is
    ignored when it names neither.
    """
    found, spans = [], []
    for m in _CITED.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found += [(m.group(1), num, line) for num in re.findall(_NUM, m.group(2))]
        spans.append(m.span(2))
    if own_doc is not None:
        bare_doc = own_doc
    else:
        named = {d for d in DOCS if re.search(rf"\b{d}\.md\b", text)}
        bare_doc = named.pop() if len(named) == 1 else ("either" if named else None)
    if bare_doc is not None:
        for m in _BARE.finditer(text):
            if not any(a <= m.start(1) < b for a, b in spans):
                found.append((bare_doc, m.group(1), text.count("\n", 0, m.start()) + 1))
    return found


def _scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCAN_FILES if (ROOT / name).is_file()]
    for d in SCAN_DIRS:
        files += [p for p in sorted((ROOT / d).rglob("*"))
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts and p.resolve() != SELF]
    return files


def _all_citations() -> list[tuple[str, str, str]]:
    out = []
    own = {path.resolve(): doc for doc, path in DOCS.items()}
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for doc, num, line in citations(text, own.get(path.resolve())):
            out.append((doc, num, f"{path.relative_to(ROOT)}:{line}"))
    return out


@pytest.fixture(scope="module")
def sections() -> dict[str, set[str]]:
    return {doc: set(headings(path.read_text(encoding="utf-8"))) for doc, path in DOCS.items()}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_doc_exists_with_unique_numbered_headings(doc):
    nums = headings(DOCS[doc].read_text(encoding="utf-8"))
    assert nums, f"{DOCS[doc]} has no numbered headings"
    assert len(nums) == len(set(nums)), f"duplicate section numbers in {DOCS[doc].name}: {nums}"


def test_every_cited_section_exists(sections):
    cites = _all_citations()
    # the scan really finds the ~300 teams.md citations of the code (guards against a regex that matches nothing)
    assert sum(doc == "teams" for doc, _, _ in cites) >= 250
    assert sum(doc == "ecosystem" for doc, _, _ in cites) >= 8
    missing = sorted({f"{where}: {doc}.md §{num}" for doc, num, where in cites
                      if not (num in sections["teams"] | sections["ecosystem"] if doc == "either"
                              else num in sections[doc])})
    assert not missing, "citations without a section in docs/:\n" + "\n".join(missing)


def test_citation_parser_reads_the_forms_used_and_can_fail():
    text = ("# teams.md §1.3: focal γ=2\n"
            "x = 1  # (Team 1, teams.md\n#   §1.4) and docs/teams.md §1.1-1.2, §1.6; teams.md §3.4/§3.5\n"
            "'source': 'teams.md section 3.5'; ecosystem.md §5.2; teams.md §4.1 step 2; (§9.9)\n")
    got = [(d, n) for d, n, _ in citations(text)]
    assert got == [("teams", "1.3"), ("teams", "1.4"), ("teams", "1.1"), ("teams", "1.2"), ("teams", "1.6"),
                   ("teams", "3.4"), ("teams", "3.5"), ("teams", "3.5"), ("ecosystem", "5.2"), ("teams", "4.1"),
                   ("either", "9.9")]
    assert citations("a bare §2 in a file that names no doc") == []
    assert citations("see §2.1", own_doc="ecosystem") == [("ecosystem", "2.1", 1)]
    assert headings("## 0. Data\n### 0.1 Files\n#### 1.2.3 Deep\nnot # 4.1 a heading\n") == ["0", "0.1", "1.2.3"]
    # a section the docs lack is reported
    assert "9.9" not in set(headings(DOCS["teams"].read_text(encoding="utf-8")))
