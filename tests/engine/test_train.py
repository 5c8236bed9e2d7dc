"""engine/train.py: a checkpoint whose optimiser steps Lightning counted is refused, untouched."""

from __future__ import annotations

import pytest
import torch

from mtlseg.config import load_config
from mtlseg.engine.module import STEP_OWNER_KEY
from mtlseg.engine.train import train
from mtlseg.errors import MtlsegError
from tests.conftest import TINY_UNET


def test_a_checkpoint_from_before_the_step_was_ours_is_refused_and_left_as_it_was(
    kvasir_small, tmp_path
):
    sets = [*TINY_UNET, f"data.path={kvasir_small}", "train.val_every=2"]
    out = tmp_path / "run"
    result = train(load_config("unet", [*sets, "train.max_steps=2"]), out)
    saved = torch.load(result.last_checkpoint, weights_only=True)
    assert saved["global_step"] == 2 and STEP_OWNER_KEY in saved
    del saved[STEP_OWNER_KEY]  # what mtlseg wrote before: Lightning counted the steps
    torch.save(saved, result.last_checkpoint)
    before = result.last_checkpoint.read_bytes()
    with pytest.raises(MtlsegError, match="earlier mtlseg, whose optimiser steps Lightning"):
        train(load_config("unet", [*sets, "train.max_steps=4"]), out, resume=True)
    assert result.last_checkpoint.read_bytes() == before
    assert not (out / "checkpoints" / "interrupted.ckpt").exists()
