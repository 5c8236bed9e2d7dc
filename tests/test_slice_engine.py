"""Issue 3 end to end on real ACDC volumes with tiny models: recipes train, resume, predict."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import pytest
import torch

from mtlseg.cli import main
from mtlseg.engine.checkpoint import load_checkpoint
from mtlseg.engine.data import prepare_data
from mtlseg.engine.inference import evaluate, load_module, predict
from mtlseg.engine.train import build_trainer, train
from mtlseg.errors import DataError
from mtlseg.settings import load_config

TINY = [
    "model.params.channels=[4,8,16]",
    "data.image_size=32",
    "train.batch_size=8",
    "train.progress_bar=false",
]


def _cfg(recipe, data, *extra):
    return load_config(recipe, [*TINY, f"data.path={data}", *extra])


def test_contrastive_recipe_trains_on_patient_pair_batches(acdc_small, tmp_path):
    cfg = _cfg(
        "small-unet-contrastive",
        acdc_small,
        "train.max_steps=4",
        "train.val_every=2",
        "train.log_every=1",
    )
    result = train(cfg, tmp_path / "run")
    header = (tmp_path / "run" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_contrastive" in header
    metrics = evaluate(result.best_checkpoint, str(acdc_small), "val")
    # volumes of several slices: per-case (volume) Dice, slice-wise as a secondary column
    assert {"dice/mean", "slice_dice/mean"} <= set(metrics)


def test_epochs_cosine_schedule_and_early_stopping(acdc_small, tmp_path):
    cfg = _cfg("small-unet-position", acdc_small, "train.max_epochs=2", "train.early_stopping=5")
    data = prepare_data(cfg.data)
    result = train(cfg, tmp_path / "run", data=data)
    ckpt = load_checkpoint(result.last_checkpoint)
    steps_per_epoch = len(data.train) // 8  # shuffle sampler drops the last partial batch
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * steps_per_epoch
    assert ckpt["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(0.0, abs=1e-9)  # cosine end
    with open(tmp_path / "run/logs/metrics.csv") as f:
        validated = [row["epoch"] for row in csv.DictReader(f) if row["val/dice"]]
    assert validated == ["0", "1"]  # once at the end of every epoch
    trainer = build_trainer(cfg, tmp_path / "other")
    (stop,) = [c for c in trainer.callbacks if type(c).__name__ == "EarlyStopping"]
    assert stop.monitor == "val/dice" and stop.patience == 5 and stop.mode == "max"


def _add_untagged_case(root):
    """A copy of one volume under a case id without a phase tag: its phase is unknown."""
    shutil.copy(
        root / "imagesTr" / "patient002_frame01_0000.nii.gz",
        root / "imagesTr" / "scan7_0000.nii.gz",
    )
    shutil.copy(root / "labelsTr" / "patient002_frame01.nii.gz", root / "labelsTr" / "scan7.nii.gz")
    split = json.loads((root / "splits.json").read_text())
    split["train"].append("scan7")
    (root / "splits.json").write_text(json.dumps(split))


def test_film_needs_its_fields_or_fills_them_when_asked(acdc_small, tmp_path):
    _add_untagged_case(acdc_small)
    with pytest.raises(
        DataError, match=r"'phase' needed by model.film is unknown for 1 case.*scan7"
    ):
        train(_cfg("small-unet-film", acdc_small, "train.max_steps=2"), tmp_path / "a")
    cfg = _cfg("small-unet-film", acdc_small, "train.max_steps=2", "model.film.missing=zero")
    result = train(cfg, tmp_path / "b")
    module = load_module(result.last_checkpoint)
    film = module.model.film
    assert film.mean[film.fields.index("position")].item() == pytest.approx(0.5, abs=0.05)
    assert film.std[film.fields.index("height")].item() > 0


def test_film_model_predicts_volumes_from_files(acdc_small, tmp_path):
    cfg = _cfg("small-unet-film", acdc_small, "train.max_steps=2", "data.split_mode=seen-patients")
    result = train(cfg, tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert "seen-patients" in recorded["source"]
    source = acdc_small / "imagesTr" / "patient002_frame01_0000.nii.gz"
    (written,) = predict(result.last_checkpoint, source, tmp_path / "pred")
    labels = nib.load(str(written)).get_fdata()
    assert labels.shape == nib.load(str(source)).shape and set(labels.ravel()) <= {0, 1, 2, 3}


def test_big_unet_trains_and_reloads_without_its_weights_file(acdc_small, tmp_path):
    from mtlseg.models.resnet import ResNetEncoder

    torch.save(ResNetEncoder(3, [1, 1, 1, 1], 4).state_dict(), tmp_path / "r.pth")
    params = '{"layers": [1, 1, 1], "width": 4, "weights": "%s", "freeze": 4}' % (
        tmp_path / "r.pth"
    )
    cfg = _cfg("big-unet", acdc_small, f"model.params={params}", "train.max_steps=2")
    result = train(cfg, tmp_path / "run")
    (tmp_path / "r.pth").unlink()  # inference rebuilds from the checkpoint alone
    assert load_module(result.last_checkpoint).model.backbone.encoder.conv1.weight.shape[1] == 3


def test_lr_find_from_the_cli(acdc_small, tmp_path, capsys):
    args = ["lr-find", "--recipe", "small-unet", "--data", str(acdc_small), "--out", str(tmp_path)]
    args += ["--steps", "30", *sum((["--set", s] for s in TINY), [])]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "suggested learning rate" in out
    record = json.loads((tmp_path / "lr_find.json").read_text())
    assert len(record["lr"]) == len(record["loss"]) > 5
    assert min(record["lr"]) <= record["suggestion"] <= max(record["lr"])
    assert f"--set train.lr={record['suggestion']:.3g}" in out  # the rate it recorded
