"""README.md and docs/ hold together: every relative link and image resolves, every page is reachable from the index
(docs/README.md), no two pages share a title, and the README stays a front door (at most ~160 lines)."""

from __future__ import annotations

import re

from shared import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
INDEX = ROOT / "docs" / "README.md"


def links(page) -> list[str]:
    """Relative targets of Markdown links and images on `page`, without their #anchor (code is not read)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_resolves():
    broken = [f"{p.relative_to(ROOT)} -> {t}" for p in PAGES for t in links(p) if not (p.parent / t).exists()]
    assert not broken, broken


def test_every_page_is_reachable_from_the_index():
    seen, todo = {INDEX}, [INDEX]
    while todo:
        page = todo.pop()
        for target in links(page):
            path = (page.parent / target).resolve()
            if path.suffix == ".md" and path not in seen and path.is_relative_to(ROOT / "docs"):
                seen.add(path)
                todo.append(path)
    missing = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in seen]
    assert not missing, f"not reachable from docs/README.md: {missing}"
    assert "docs/README.md" in links(ROOT / "README.md")


def test_no_two_pages_share_a_title():
    titles = [p.read_text().split("\n", 1)[0] for p in PAGES[1:]]
    assert all(t.startswith("# ") for t in titles)
    assert len(set(titles)) == len(titles), sorted(t for t in titles if titles.count(t) > 1)


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 160
