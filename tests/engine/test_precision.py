"""engine/precision.py: a run's first line names the device, the threads and the precision."""

from __future__ import annotations

import torch

from mtlseg.engine.precision import cpu_model, run_line


def test_the_run_line_names_device_threads_precision_and_why_auto_chose_it(monkeypatch):
    monkeypatch.setenv("MTLSEG_AUTO_PRECISION", "32")
    threads = torch.get_num_threads()
    line = run_line("32", "auto", "cpu")
    assert line == (
        f"CPU {cpu_model()}, {threads} thread(s), precision 32 "
        "(auto: $MTLSEG_AUTO_PRECISION sets it)"
    )
    assert run_line("bf16-mixed", "bf16-mixed", "cpu").endswith("precision bf16-mixed")
