"""Checkpoints written before the one-inference-path redesign (issue 20) still load and
predict exactly as they did (tests/fixtures/make_old_checkpoints.py made them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtlseg.engine.inference import load_module

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "checkpoints").glob("*.pt"))


def test_the_fixtures_are_there():
    assert len(FIXTURES) == 6


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_an_old_checkpoint_loads_and_predicts_the_same(path):
    saved = torch.load(path, weights_only=True)
    module = load_module(path)  # strict: every key of the old state dict has its place
    assert module.cfg.data.label_resize == "nearest"  # the rule they trained with
    meta = saved["meta"] if module.model.film is not None else None
    with torch.no_grad():
        logits = module.segment(saved["input"], meta)
    assert torch.allclose(logits, saved["logits"], atol=1e-6)
