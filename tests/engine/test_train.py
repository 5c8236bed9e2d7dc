"""engine/train.py: Ctrl-C keeps the run and says how to go on; a checkpoint whose optimiser
steps Lightning counted is refused, untouched."""

from __future__ import annotations

import signal

import lightning.pytorch as pl
import pytest
import torch

from mtlseg.cli import continuation
from mtlseg.engine.module import STEP_OWNER_KEY
from mtlseg.engine.train import train
from mtlseg.errors import Interrupted, MtlsegError
from mtlseg.settings import load_config
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


class _CtrlCAt(pl.Callback):
    """Presses Ctrl-C before the training step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_the_run_says_where_and_resumes_there(kvasir_small, tmp_path):
    sets = [*TINY_UNET, f"data.path={kvasir_small}", "train.val_every=10", "train.max_steps=4"]
    out = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted, match=r"interrupted.ckpt holds step 2"):
            train(load_config("unet", sets), out, callbacks=[_CtrlCAt(2)])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C meanwhile
    assert train(load_config("unet", sets), out, resume=True).steps == 4


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["train", "--recipe", "unet", "--data", "my data", "--out", "r"],
            "continue with: mtlseg train --recipe unet --data 'my data' --out r --resume",
        ),
        (["train", "--out", "r", "--resume"], "continue with: mtlseg train --out r --resume"),
        (
            ["demo", "--steps", "10"],
            "continue with: mtlseg demo --steps 10 (finished runs are kept)",
        ),
        (["evaluate", "--ckpt", "c"], "run it again: mtlseg evaluate --ckpt c"),
    ],
)
def test_ctrl_c_names_the_exact_command_that_continues(argv, line):
    assert continuation(argv) == line
