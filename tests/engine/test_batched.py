"""engine/batched.py: progress where no bar can draw is a line per tenth of the files."""

from __future__ import annotations

import logging

from mtlseg.engine.batched import _progress


def test_progress_into_a_log_is_a_plain_line_per_tenth(caplog, monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    bar = _progress(25, enabled=True)
    with caplog.at_level(logging.INFO, logger="mtlseg.engine.batched"):
        for _ in range(25):
            bar.set_postfix_str("3.0 images/s")
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10 and not any("\r" in line for line in lines)
    assert lines[0] == "3/25 files, 3.0 images/s" and lines[-1] == "25/25 files, 3.0 images/s"
    assert _progress(25, enabled=False) is None
