"""End to end on real data with tiny models: train, checkpoint, resume, evaluate, predict."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage import io

from mtlseg.engine.checkpoint import load_checkpoint, save_atomic
from mtlseg.engine.inference import evaluate, load_module, predict
from mtlseg.engine.train import train
from mtlseg.errors import MtlsegError, TrainingError
from mtlseg.settings import load_config
from tests.conftest import TINY_UNET, power_cut_at, validation_of


def _cfg(recipe, data, *extra):
    return load_config(recipe, [*TINY_UNET, f"data.path={data}", *extra])


def test_train_checkpoint_resume_evaluate_predict_volumes(acdc_small, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg("unet-hog", acdc_small, "train.max_steps=4", "train.val_every=2"), out)
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file()
    assert (out / "config.yaml").is_file() and (out / "logs" / "metrics.csv").is_file()
    given = json.loads((acdc_small / "splits.json").read_text())
    assert json.loads((out / "splits.json").read_text())["val"] == given["val"]
    assert any((out / "tb").iterdir()), "TensorBoard events are written"
    ckpt = load_checkpoint(result.last_checkpoint)  # weights_only=True
    assert ckpt["global_step"] == 4

    with pytest.raises(MtlsegError, match="already holds a run"):
        train(_cfg("unet-hog", acdc_small, "train.max_steps=6"), out)
    resumed = train(
        _cfg("unet-hog", acdc_small, "train.max_steps=6", "train.val_every=2"), out, resume=True
    )
    assert load_checkpoint(resumed.last_checkpoint)["global_step"] == 6

    metrics = evaluate(resumed.best_checkpoint, str(acdc_small), "val")
    assert metrics["num_cases"] == 2
    for key in ("dice/RV", "dice/mean", "iou/LV", "pixel_accuracy", "slice_dice/mean"):
        assert key in metrics and np.isfinite(metrics[key])
    # evaluate at the training size reproduces what validation logged for that checkpoint
    logged = validation_of(resumed.best_checkpoint)
    assert metrics["dice/mean"] == pytest.approx(logged["val/dice"], abs=1e-6)
    assert metrics["slice_dice/mean"] == pytest.approx(logged["val/slice_dice/mean"], abs=1e-6)

    volume = sorted((acdc_small / "imagesTr").iterdir())[0]
    written = predict(resumed.best_checkpoint, volume, tmp_path / "pred")
    assert [p.name for p in written] == [volume.name.replace("_0000", "")]
    pred = nib.load(str(written[0]))
    source = nib.load(str(volume))
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3}


def test_resumed_run_equals_uninterrupted_run(kvasir_small, tmp_path):
    # 12 cases, 9 train / batch 4 -> 2 steps per epoch: the checkpoint falls on an epoch end
    # the interruption is simulated by a shorter max_steps, so the schedule must not depend
    # on the planned length (poly/cosine/warm-up do): the step schedule does not
    common = [
        "train.val_every=2",
        "data.val_fraction=0.25",
        "train.scheduler=step",
        "train.warmup=0",
    ]
    full = train(_cfg("unet-hog", kvasir_small, "train.max_steps=4", *common), tmp_path / "full")
    train(_cfg("unet-hog", kvasir_small, "train.max_steps=2", *common), tmp_path / "split")
    half = train(
        _cfg("unet-hog", kvasir_small, "train.max_steps=4", *common),
        tmp_path / "split",
        resume=True,
    )
    a = load_checkpoint(full.last_checkpoint)["state_dict"]
    b = load_checkpoint(half.last_checkpoint)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key


def test_predict_png_masks_at_original_size(kvasir_small, tmp_path):
    result = train(
        _cfg("unet", kvasir_small, "train.max_steps=2", "train.val_every=2"), tmp_path / "run"
    )
    written = predict(result.best_checkpoint, kvasir_small / "images", tmp_path / "pred")
    assert len(written) == 12
    mask = io.imread(written[0])
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}


def test_predict_rejects_wrong_channel_count(kvasir_small, acdc_small, tmp_path):
    result = train(
        _cfg("unet", kvasir_small, "train.max_steps=2", "train.val_every=2"), tmp_path / "run"
    )
    volume = sorted((acdc_small / "imagesTr").iterdir())[0]
    with pytest.raises(
        MtlsegError, match=f"{volume}: 1 channel\\(s\\), the model was trained on 3"
    ):
        predict(result.best_checkpoint, volume, tmp_path / "pred")


def test_nan_loss_stops_with_step_and_task(kvasir_small, tmp_path):
    cfg = _cfg("unet-hog", kvasir_small, "train.max_steps=3", "train.lr=1e30")
    with pytest.raises(TrainingError, match=r"step \d+: loss of task '(segmentation|hog)' is nan"):
        train(cfg, tmp_path / "run")


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    save_atomic({"a": torch.ones(2)}, target)

    def crash(obj, f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        save_atomic({"a": torch.zeros(2)}, target)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(target)["a"], torch.ones(2)), "old checkpoint intact"


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"x": np.dtype("float64").type}, "state_dict": {}}, path)
    with pytest.raises(MtlsegError, match="cannot load checkpoint"):
        load_module(path)


def test_crash_mid_training_leaves_a_checkpoint_to_resume_from(kvasir_small, tmp_path, monkeypatch):
    from mtlseg.engine.train import resume_checkpoint

    power_cut_at(monkeypatch, 3)
    out = tmp_path / "run"
    cfg = _cfg("unet-hog", kvasir_small, "train.max_steps=6", "train.val_every=10")
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, out)
    monkeypatch.undo()
    assert resume_checkpoint(out).name == "interrupted.ckpt"
    assert load_checkpoint(out / "checkpoints" / "interrupted.ckpt")["global_step"] == 3
    resumed = train(cfg, out, resume=True)
    assert load_checkpoint(resumed.last_checkpoint)["global_step"] == 6


def test_a_run_crashed_twice_logs_and_validates_as_an_uninterrupted_one(
    kvasir_small, tmp_path, monkeypatch
):
    def logged(out):
        with (out / "logs" / "metrics.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        return [(int(r["step"]), "val" if r.get("val/dice") else "train") for r in rows]

    cfg = _cfg("unet", kvasir_small, "train.max_steps=8", "train.val_every=3", "train.log_every=1")
    train(cfg, tmp_path / "whole")
    out = tmp_path / "run"
    power_cut_at(monkeypatch, 4)  # mid-epoch
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, out)
    monkeypatch.undo()
    # the resumed run dies hard (at an epoch's start): it never writes back the rows it held
    power_cut_at(monkeypatch, 6)
    monkeypatch.setattr("mtlseg.engine.train._prepend_rows", _killed)
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, out, resume=True)
    monkeypatch.undo()
    train(cfg, out, resume=True)
    assert logged(out) == logged(tmp_path / "whole")
    assert [s for s, kind in logged(out) if kind == "train"] == list(range(8))
    assert not (out / "logs" / "metrics.before-resume.csv").exists()


def _killed(*args):
    raise RuntimeError("killed")


def test_resume_with_a_different_setup_is_refused(kvasir_small, tmp_path):
    out = tmp_path / "run"
    train(_cfg("unet", kvasir_small, "train.max_steps=2", "train.val_every=2"), out)
    with pytest.raises(MtlsegError, match="cannot resume, data.image_size differs"):
        train(
            _cfg("unet", kvasir_small, "train.max_steps=4", "data.image_size=64"), out, resume=True
        )
    resumed = train(
        _cfg("unet", kvasir_small, "train.max_steps=4", "train.val_every=2"), out, resume=True
    )
    assert load_checkpoint(resumed.last_checkpoint)["global_step"] == 4


def test_resume_without_a_run_is_a_clear_error(kvasir_small, tmp_path):
    with pytest.raises(MtlsegError, match="nothing to resume"):
        train(_cfg("unet", kvasir_small), tmp_path / "empty", resume=True)


def test_output_that_is_not_a_terminal_gets_a_plain_line_per_validation(
    kvasir_small, tmp_path, caplog
):
    """No ``\\r`` progress bar into a file or pipe (pytest's capture is not a terminal): a
    line per validation with the step, the Dice, the time spent and the time left."""
    import logging

    from mtlseg.engine.train import train
    from mtlseg.settings import load_config

    sets = [*TINY_UNET, f"data.path={kvasir_small}", "train.max_steps=4", "train.val_every=2"]
    with caplog.at_level(logging.INFO, logger="mtlseg.engine.callbacks"):
        train(load_config("unet", [*sets, "train.progress_bar=true"]), tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if r.name == "mtlseg.engine.callbacks"]
    assert [line.split(":")[0] for line in lines] == ["step 2/4", "step 4/4"]
    assert "val Dice" in lines[0] and "left" in lines[0] and "left" not in lines[1]
