"""Results pages whose tables are generated from the store, between markers.

A page holds ``<!-- study:NAME -->`` ... ``<!-- /study:NAME -->``; ``mtlseg study report
STUDY --page PAGE`` replaces what lies between them with the study's report, and ``--check``
says whether the page already holds exactly that (a test runs it on every committed page).
Everything outside the markers is the page's own text: what the study asks, the command,
the reading.
"""

from __future__ import annotations

import re
from pathlib import Path

from mtlseg.errors import MtlsegError


def markers(study: str) -> tuple[str, str]:
    return f"<!-- study:{study} -->", f"<!-- /study:{study} -->"


def generated_block(page: str, study: str, path: Path | str = "page") -> str:
    """The text between the study's markers in ``page``."""
    start, end = markers(study)
    found = re.search(re.escape(start) + r"\n(.*?)" + re.escape(end), page, flags=re.S)
    if found is None:
        raise MtlsegError(f"{path}: no '{start}' ... '{end}' block to hold study {study}'s tables")
    return found.group(1)


def update_page(path: Path, study: str, text: str, check: bool = False) -> bool:
    """Put ``text`` between the study's markers in ``path``; whether it changed anything.
    With ``check`` the page is left as it is."""
    try:
        page = path.read_text()
    except OSError as err:
        raise MtlsegError(f"{path}: cannot read the page ({err.strerror})") from None
    old = generated_block(page, study, path)
    if old == text:
        return False
    if not check:
        start, end = markers(study)
        path.write_text(page.replace(f"{start}\n{old}{end}", f"{start}\n{text}{end}", 1))
    return True
