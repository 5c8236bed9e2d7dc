"""3D training (data.dims=3) on real ACDC volumes with tiny widths: patches, the anisotropic
3D UNet, per-volume metrics, sliding-window prediction to NIfTI, and the errors."""

import logging

import nibabel as nib
import numpy as np
import pytest
import torch

from mtlseg.config import load_recipe_dict
from mtlseg.data.volumes import VolumeDataset
from mtlseg.engine.data import prepare_data
from mtlseg.engine.inference import evaluate, evaluate_cases, load_module, predict
from mtlseg.engine.module import build_model_and_tasks
from mtlseg.engine.train import train
from mtlseg.errors import ConfigError, DataError
from mtlseg.metrics import SegmentationMetrics, score_case
from mtlseg.models import build_backbone
from mtlseg.models.context import ContextEnsemble
from mtlseg.settings import load_config
from mtlseg.tasks.image_level import mask_presence
from tests.conftest import validation_of

TINY_3D = [
    "model.params.channels=[4,8,16]",
    "data.image_size=32",
    "data.patch_size=[32,32,4]",
    "train.batch_size=2",
    "train.progress_bar=false",
    "train.max_minutes=null",
]
HEADS = ["tasks.presence.params.hidden=8", "tasks.scene.params.hidden=8"]


def _data(recipe, root, *extra):
    cfg = load_config(recipe, [*TINY_3D, f"data.path={root}", *extra])
    return cfg, prepare_data(cfg.data)


def test_anisotropic_unet3d_keeps_the_slices_in_its_first_levels():
    net = build_backbone("unet3d", {"channels": [4, 8, 16, 16], "anisotropic_levels": 2}, 1, 3)
    logits, feats = net(torch.randn(1, 1, 32, 32, 4))
    assert logits.shape == (1, 3, 32, 32, 4)
    depth = {k: v.shape[-1] for k, v in feats.items()}
    # levels 0, 1 in-plane only (z 4), then z halves: 2 at level 2, 1 at level 3
    assert depth == {"bottleneck": 1, "decoder1": 2, "decoder2": 4, "decoder3": 4}
    first = net.encoder[0].conv1.conv.weight
    deep = net.encoder[3].conv1.conv.weight
    assert first.shape[-3:] == (3, 3, 1) and deep.shape[-3:] == (3, 3, 3)
    assert net.size_multiple == (8, 8, 4)


def test_context_ensemble_in_3d_anisotropic_keeps_the_size():
    ce = ContextEnsemble(2, [3, 1], dims=3, anisotropic=True)
    x = torch.randn(1, 2, 12, 12, 3)
    assert ce(x).shape == x.shape
    assert ce.stages[0][0].kernel_size == (3, 3, 1)


def test_patches_pad_thin_volumes_and_follow_the_mask(acdc_labelled, caplog):
    cfg, data = _data("unet3d", acdc_labelled)
    depths = [m.shape[-1] for m in data.train.masks]
    with caplog.at_level(logging.INFO, logger="mtlseg.data.volumes"):
        thick = VolumeDataset(
            [c for c in data.dataset.cases if c.case_id in data.split["train"]],
            32,
            [32, 32, max(depths) + 3],
        )
    assert "smaller than the patch" in caplog.text and "zero-padded" in caplog.text
    torch.manual_seed(0)
    sample = thick[0]
    assert sample["image"].shape == (1, 32, 32, max(depths) + 3)
    assert sample["mask"].shape == (32, 32, max(depths) + 3)
    # a patch of a real volume: its presence target is the classes inside the patch
    patch = data.train[1]
    assert patch["image"].shape == (1, 32, 32, 4) and patch["mask"].shape == (32, 32, 4)
    expected = [float((patch["mask"] == k).any()) for k in (1, 2, 3)]
    assert mask_presence(patch["mask"][None], 4)[0].tolist() == expected
    assert patch["labels"]["pathology"] in {"DCM", "HCM", "MINF", "NOR", "RV"}
    assert data.val[0]["mask"].shape[-1] == data.val.masks[0].shape[-1]  # whole volumes


def test_volume_metrics_are_3d_dice_per_volume():
    torch.manual_seed(0)
    pred = torch.randint(0, 3, (2, 8, 8, 4))
    target = torch.randint(0, 3, (2, 8, 8, 4))
    m = SegmentationMetrics(["bg", "a", "b"])
    m.update(pred, target, torch.tensor([0, 1]))
    out = m.compute()
    by_hand = []
    for k in (1, 2):
        dices = []
        for p, t in zip(pred, target, strict=True):
            tp = ((p == k) & (t == k)).sum().item()
            dices.append(2 * tp / ((p == k).sum().item() + (t == k).sum().item()))
        by_hand.append(np.mean(dices))
    assert out["dice/mean"] == pytest.approx(np.mean(by_hand))
    assert "slice_dice/mean" not in out  # every sample is a whole volume: one per case
    for i, (p, t) in enumerate(zip(pred, target, strict=True)):  # the per-case entry point
        row = score_case(p, t, ["bg", "a", "b"])
        assert row["dice/a"] == pytest.approx(
            2 * ((p == 1) & (t == 1)).sum().item() / ((p == 1).sum() + (t == 1).sum()).item()
        ), i
        assert row["hd95/mean"] > 0


@pytest.mark.parametrize("recipe", ["unet3d", "unet3d-decomp"])
def test_3d_train_resume_sliding_window_predict_to_nifti(recipe, acdc_labelled, tmp_path):
    extra = [*TINY_3D, f"data.path={acdc_labelled}", "train.val_every=2"]
    if recipe == "unet3d-decomp":
        extra += [*HEADS, "train.stages=[{steps: 1, terms: [], tasks: [presence]}, {}]"]
    out = tmp_path / "run"
    train(load_config(recipe, [*extra, "train.max_steps=2"]), out)
    result = train(load_config(recipe, [*extra, "train.max_steps=4"]), out, resume=True)
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == 4
    metrics = evaluate(result.best_checkpoint, str(acdc_labelled), "val")
    assert metrics["num_samples"] == metrics["num_cases"] == 4  # one sample per volume
    rows, summary = evaluate_cases(result.best_checkpoint, str(acdc_labelled), "val")
    assert [r["case"] for r in rows] == sorted(
        load_module(result.best_checkpoint).hparams["split"]["val"]
    )
    assert summary["metrics"]["hd95/mean"]["n"] == 4  # in the volume's own voxels
    logged = validation_of(result.best_checkpoint)  # a re-evaluation reproduces validation
    assert metrics["dice/mean"] == pytest.approx(logged["val/dice"], abs=1e-6)
    if recipe == "unet3d-decomp":
        assert metrics["task/presence/accuracy"] == pytest.approx(
            logged["val/presence/accuracy"], abs=1e-6
        )
        assert "task/scene/recall/DCM" in metrics
    source = sorted((acdc_labelled / "imagesTr").iterdir())[0]
    (written,) = predict(result.best_checkpoint, source, tmp_path / "pred")
    image, labels = nib.load(source), nib.load(written)
    assert labels.shape == image.shape[:3]
    assert np.allclose(labels.affine, image.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 3}


def test_2d_only_recipes_and_data_are_refused_in_3d(acdc_labelled, kvasir_small):
    cfg = load_config("unet", [*TINY_3D, "data.dims=3"])
    with pytest.raises(ConfigError, match=r"data.dims=3: model.backbone=unet is a 2D network"):
        build_model_and_tasks(cfg, 1, 4)
    raw = load_recipe_dict("unet3d")
    raw["tasks"].append({"kind": "hog"})
    with pytest.raises(ConfigError, match=r"tasks.hog \(hog\) works on 2D data only"):
        load_config(raw, TINY_3D)  # at load, before any data is read
    with pytest.raises(ConfigError, match=r"data.patch_size \[32, 32, 3\]: unet3d needs sizes"):
        build_model_and_tasks(
            load_config(
                "unet3d",
                [*TINY_3D, "data.patch_size=[32,32,3]", "model.params.channels=[4,8,16,16]"],
            ),
            1,
            4,
        )
    with pytest.raises(DataError, match=r"data.dims=3 trains on volumes, this dataset holds 2D"):
        _data("unet3d", kvasir_small)


def test_compare_of_3d_recipes_reports_volume_dice_tasks_and_figures(acdc_labelled, tmp_path):
    from mtlseg.report.compare import compare

    sets = [*TINY_3D, "train.max_steps=2", "train.val_every=1", "train.stages=[]"]
    result = compare(["unet3d", "unet3d-decomp"], str(acdc_labelled), 1, tmp_path / "cmp", sets)
    table = result.table
    assert "dice/mean best-on-val" in table and "| unet3d |" in table
    assert "presence" in table and "scene" in table  # the auxiliary tasks' own metrics
    from PIL import Image

    # one row per val volume (4 here), columns input, unet3d, unet3d-decomp, ground truth
    assert Image.open(result.qualitative).size == (220 * 4, 220 * 4)
