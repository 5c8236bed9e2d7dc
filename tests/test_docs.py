"""The docs cannot drift from the code: the CLI page is the --help texts; README stays short."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtlseg.cli_doc import cli_markdown
from tests.conftest import DATA_ROOT, require_data

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


def _headline(text: str) -> str:
    return text.split("<!-- headline -->\n", 1)[1].split("<!-- /headline -->", 1)[0]


def test_readme_and_the_results_page_hold_the_same_headline_table():
    readme = _headline((REPO / "README.md").read_text())
    page = _headline((REPO / "docs" / "results.md").read_text())
    assert readme == page and readme.startswith("| paper |")


STUDIES = sorted((REPO / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_study_page_is_what_its_records_give(path):
    """A study's page holds exactly the tables its committed records make (``mtlseg study
    report STUDY`` rewrites them); a hand edit of a generated table fails here."""
    from mtlseg.study.pages import generated_block
    from mtlseg.study.report import build_report, render
    from mtlseg.study.spec import load_study
    from mtlseg.study.store import Store

    spec = yaml.safe_load(path.read_text())
    require_data(DATA_ROOT / spec["data"])
    study = load_study(path, str(DATA_ROOT / spec["data"]))
    assert study.page is not None and study.page.is_file()
    expected = render(build_report(study, Store(REPO / "results", study.name).records()))
    assert generated_block(study.page.read_text(), study.name, study.page) == expected, (
        f"run: mtlseg study report {path.relative_to(REPO)}"
    )


def test_the_site_renders_every_table(tmp_path):
    """A table right after a code fence (no blank line) stays raw text on the site, which
    ``mkdocs --strict`` does not catch: build it and look for table rows outside tables."""
    import importlib.util
    import os
    import re
    import subprocess
    import sys

    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site)],
        cwd=REPO,
        check=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    raw = []
    for page in site.rglob("*.html"):
        text = re.sub(r"<pre.*?</pre>", "", page.read_text(), flags=re.S)
        raw += [f"{page.relative_to(site)}: {m[:60]}" for m in re.findall(r"\n\|---\|.*", text)]
    assert raw == []


def test_readme_and_getting_started_give_the_same_test_command():
    def command(path: Path) -> str:
        return next(line for line in path.read_text().splitlines() if "-m pytest" in line)

    readme = command(REPO / "README.md")
    assert command(REPO / "docs" / "getting-started.md") == readme.removeprefix(
        "python3.11 -m venv .venv && "
    )
