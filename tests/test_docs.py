"""The docs cannot drift from the code: the CLI page is the --help texts; README stays short."""

from __future__ import annotations

from pathlib import Path

from mtlseg.cli_doc import cli_markdown

REPO = Path(__file__).resolve().parents[1]


def test_cli_page_is_the_current_help_text():
    page = (REPO / "docs" / "cli.md").read_text()
    assert page == cli_markdown(), "run: python -m mtlseg.cli_doc docs/cli.md"
    for command in ("download", "export", "predict", "compare", "demo"):
        assert f"## mtlseg {command}" in page


def test_readme_is_short_and_every_docs_page_is_in_the_site():
    assert len((REPO / "README.md").read_text().splitlines()) < 150
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert [p for p in pages if p not in nav] == []
