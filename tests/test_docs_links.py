"""Every link of README.md and docs/*.md to a file of the repository finds the file, and every link to a section
(`#anchor`, on the same page or another) finds a heading with that anchor, as GitHub makes anchors."""
import re
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, '-', '_' and spaces stay),
    spaces made hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated one gets -1, -2, ... as on GitHub."""
    seen, found = Counter(), set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        slug = anchor(heading)
        found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return found


def links() -> list[tuple[str, str]]:
    """(page, target) for every link of the pages that is not to the web nor inside code."""
    found = []
    for page in PAGES:
        text = CODE.sub("", FENCE.sub("", page.read_text()))
        found += [(page.relative_to(REPO).as_posix(), target) for target in LINK.findall(text)
                  if not re.match(r"[a-z]+:", target)]
    return found


def test_the_anchors_are_githubs():
    assert anchor("`embed.py`: features for any folder of videos") == "embedpy-features-for-any-folder-of-videos"
    assert anchor("Settings (reproduction cards)") == "settings-reproduction-cards"
    assert anchor("The data (METHOD.md §1.4, version 2)") == "the-data-methodmd-14-version-2"


def test_the_pages_link_their_sections():
    assert sum("#" in target for _, target in links()) >= 8


@pytest.mark.parametrize("page, target", links(), ids=lambda value: value)
def test_every_link_resolves(page, target):
    path, _, section = target.partition("#")
    linked = (REPO / page).parent / path if path else REPO / page
    assert linked.exists(), f"{page} links {target}: no {linked.relative_to(REPO)}"
    if section:
        assert linked.suffix == ".md" and section in anchors(linked), (
            f"{page} links {target}: {linked.relative_to(REPO)} has no heading with that anchor "
            f"(it has {', '.join(sorted(anchors(linked)))})")
