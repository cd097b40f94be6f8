"""The documentation agrees with the code: the configuration reference is what the settings declare,
and every link from the README into docs/ reaches a page and an anchor that exist."""

import re
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

from stream_clf.settings import WORKER_OPTIONS
from stream_clf.settings.reference import main as reference_main
from stream_clf.settings.reference import reference, with_reference

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
_LINK = re.compile(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)")


def _anchors(page: Path) -> set[str]:
    """The anchors MkDocs gives a page's headings (Python-Markdown's toc slugs), fences skipped."""
    anchors, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"^#{1,6} (.+)$", line)):
            anchors.add(slugify(heading.group(1).replace("`", ""), "-"))
    return anchors


def test_the_configuration_reference_is_what_the_settings_declare():
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert with_reference(page) == page, "run: python -m stream_clf.settings.reference docs/configuration.md"
    rows = [line for line in reference().splitlines() if line.startswith("| `--")]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{option.flag}`" for option in WORKER_OPTIONS]


def test_the_reference_check_fails_on_a_page_that_drifted(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    page.write_text((DOCS / "configuration.md").read_text().replace("`--max-batch`", "`--max-batches`"))
    assert reference_main([str(page), "--check"]) == 1
    assert "is not what the settings declare" in capsys.readouterr().err
    assert reference_main([str(page)]) == 0
    assert reference_main([str(page), "--check"]) == 0


@pytest.mark.parametrize("source", ["README.md"])
def test_every_link_into_the_docs_reaches_a_page_and_an_anchor(source):
    text = (ROOT / source).read_text(encoding="utf-8")
    links = _LINK.findall(text)
    assert links, f"{source} links into docs/"
    for target, anchor in links:
        page = ROOT / target
        assert page.is_file(), f"{source}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(page), f"{source}: {target} has no anchor #{anchor}"


def test_every_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"
