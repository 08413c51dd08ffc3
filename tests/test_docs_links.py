"""The user documentation: every relative link in README.md, CHANGELOG.md and docs/*.md points at a file that exists
(and at a heading that exists, for `#anchor` links), the README stays a short guide, and no page carries commit
hashes or times of day."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
README_MAX_LINES = 220

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text with code blocks and code spans removed (a link written inside code is not a link)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for line in _FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def _links(page: Path) -> list[str]:
    return [t for t in _LINK.findall(_prose(page.read_text())) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def test_the_link_finder_sees_links_and_skips_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A `b` heading\n[x](a.md#c) ![i](img.png) `[no](skip.md)` [web](https://x.org)\n"
                    "```\n[no](skip2.md)\n```\n## A b heading\n")
    assert _links(page) == ["a.md#c", "img.png"]
    assert _anchors(page) == {"a-b-heading", "a-b-heading-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"
    text = "\n".join(lines)
    for must in ("make demo", "make test", "hf download Lightricks/LTX-2", "avctl plan", "avctl prepare depth",
                 "avctl train depth", "avctl generate", "avctl eval"):
        assert must in text, f"README.md lost its quick start: {must!r} is missing"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_commit_hashes_or_times_of_day(page):
    text = page.read_text()
    assert not re.findall(r"\b\d{1,2}:\d{2}(?:[–-]\d{1,2}:\d{2})?\s*UTC\b", text), "a time of day"
    assert not re.findall(r"\bcommit [0-9a-f]{7,40}\b|\bat [0-9a-f]{7,40}\b(?=[,;) ])", text), "a commit hash"
