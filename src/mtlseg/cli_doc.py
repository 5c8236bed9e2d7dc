"""docs/cli.md from the ``--help`` texts, so the page cannot drift from the command.

``python -m mtlseg.cli_doc docs/cli.md`` rewrites it; ``tests/test_docs.py`` checks it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

WIDTH = "100"  # argparse wraps at $COLUMNS: fixed, so the page is the same on every terminal


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown() -> str:
    """The main help and every command's help, each in a code block."""
    from mtlseg.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        parts = [
            "# Command line",
            "",
            "Generated from `mtlseg --help` by `python -m mtlseg.cli_doc docs/cli.md` "
            "(a test fails when it is out of date).",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
        ]
        for name, sub in _subparsers(parser).items():
            parts += ["", f"## mtlseg {name}", "", "```text", sub.format_help().rstrip(), "```"]
            for action, inner in _subparsers(sub).items():  # mtlseg study run / report
                text = inner.format_help().rstrip()
                parts += ["", f"### mtlseg {name} {action}", "", "```text", text, "```"]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(cli_markdown())
