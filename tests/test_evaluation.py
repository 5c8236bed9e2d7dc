"""Evaluation on any data at its own resolution, evaluate-folder, batched prediction."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import io

from mtlseg.cli import main
from mtlseg.engine.inference import evaluate_cases, load_module, predict
from mtlseg.engine.train import train
from mtlseg.errors import DataError, MtlsegError
from mtlseg.metrics.cases import evaluate_folder, score_case
from mtlseg.settings import load_config
from tests.conftest import ACDC, KVASIR, TINY_UNET, copy_acdc_cases, require_data


@pytest.fixture(scope="module")
def kvasir_model(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny UNet trained a few steps on the first 12 Kvasir-SEG images: (ckpt, data)."""
    from tests.conftest import make_kvasir_subset

    root = tmp_path_factory.mktemp("kvasir-model")
    data = make_kvasir_subset(root / "data")
    cfg = load_config(
        "unet", [*TINY_UNET, f"data.path={data}", "train.max_steps=6", "train.val_every=6"]
    )
    return train(cfg, root / "run").best_checkpoint, data


def other_polyps(dest: Path, start: int = 40, n: int = 6) -> Path:
    """Kvasir-SEG images the model never saw, as a second folder dataset."""
    require_data(KVASIR)
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for img in sorted((KVASIR / "images").iterdir())[start : start + n]:
        shutil.copy(img, dest / "images" / img.name)
        shutil.copy(KVASIR / "masks" / img.name, dest / "masks" / img.name)
    return dest


def test_evaluate_all_scores_unseen_data_at_its_own_resolution(kvasir_model, tmp_path):
    ckpt, _ = kvasir_model
    other = other_polyps(tmp_path / "other")
    rows, summary = evaluate_cases(ckpt, str(other), "all", with_hd95=True, batch_size=5)
    assert [r["case"] for r in rows] == sorted(p.stem for p in (other / "images").iterdir())
    assert summary["num_cases"] == 6 and len(summary["worst"]) == 5
    # the same masks written by predict (at each image's size) and scored by evaluate-folder
    predict(ckpt, other / "images", tmp_path / "pred", batch_size=4, num_workers=0)
    folder_rows, _ = evaluate_folder(tmp_path / "pred", other / "masks")
    for a, b in zip(rows, folder_rows, strict=True):
        assert a["case"] == b["case"]
        for key in ("dice/foreground", "iou/foreground", "hd95/foreground"):
            assert a[key] == pytest.approx(b[key], abs=1e-9), key
    size = io.imread(next((other / "images").iterdir())).shape[:2]
    assert io.imread(next((tmp_path / "pred").iterdir())).shape == size
    with pytest.raises(DataError, match="use --split all for other data"):
        evaluate_cases(ckpt, str(other), "val")


def test_evaluate_refuses_data_with_other_classes(kvasir_model, acdc_small):
    ckpt, _ = kvasir_model
    with pytest.raises(
        DataError, match=r"classes \['background', 'RV'.*differ from the checkpoint"
    ):
        evaluate_cases(ckpt, str(acdc_small), "all")


def test_nnunet_test_cases_are_scored_with_split_test(acdc_small, tmp_path):
    root = tmp_path / "with-test"
    held_out = sorted(p.name.removesuffix(".nii.gz") for p in (ACDC / "labelsTr").iterdir())[-2:]
    copy_acdc_cases(root, held_out)
    for sub in ("images", "labels"):
        (root / f"{sub}Tr").rename(root / f"{sub}Ts")
    shutil.copytree(acdc_small / "imagesTr", root / "imagesTr")
    shutil.copytree(acdc_small / "labelsTr", root / "labelsTr")
    cfg = load_config(
        "unet", [*TINY_UNET, f"data.path={root}", "train.max_steps=2", "data.val_fraction=0.25"]
    )
    ckpt = train(cfg, tmp_path / "run").best_checkpoint
    rows, _ = evaluate_cases(ckpt, str(root), "test", with_hd95=True)
    assert [r["case"] for r in rows] == held_out
    volume = nib.load(str(root / "labelsTs" / f"{held_out[0]}.nii.gz"))
    assert all(
        r["hd95/RV"] <= np.linalg.norm(np.multiply(volume.shape, volume.header.get_zooms()))
        for r in rows
    )
    with pytest.raises(DataError, match="has no separate test cases"):
        evaluate_cases(ckpt, str(other_polyps(tmp_path / "polyps", n=2)), "test")


def test_predict_writes_the_networks_labels_at_each_images_own_size(kvasir_model, tmp_path):
    """predict (files batched, read in a worker) against a by-hand forward of each file as
    training prepares it: the full-size image z-scored per channel, resized (antialiased
    bilinear), the network, its logits back to the file's size, the larger logit."""
    ckpt, data = kvasir_model
    files = predict(ckpt, data / "images", tmp_path / "batched", batch_size=5, num_workers=1)
    assert len(files) == 12
    module = load_module(ckpt)
    size = module.cfg.data.image_size
    for path in sorted((data / "images").iterdir()):
        rgb = torch.from_numpy(io.imread(path).astype(np.float64)).permute(2, 0, 1)[None]
        std, mean = torch.std_mean(rgb, dim=(2, 3), keepdim=True, correction=0)
        x = F.interpolate(
            ((rgb - mean) / std).float(), size=(size, size), mode="bilinear", antialias=True
        )
        with torch.no_grad():
            logits = module.model.segment(x)
        logits = F.interpolate(logits, size=rgb.shape[2:], mode="bilinear", align_corners=False)
        by_hand = (logits[0, 1] > logits[0, 0]).numpy()
        written = io.imread(tmp_path / "batched" / f"{path.stem}.png") > 0
        assert written.shape == by_hand.shape
        # the two differ only in float rounding (the predictor resizes, then normalises)
        assert (written == by_hand).mean() > 0.999, path.name
    flipped = predict(ckpt, data / "images", tmp_path / "tta", tta=True, num_workers=0)
    assert len(flipped) == 12


def test_outputs_that_cannot_be_written_fail_before_any_work(kvasir_model, tmp_path):
    ckpt, data = kvasir_model
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MtlsegError, match="output folder is not writable"):
        predict(ckpt, data / "images", blocker / "pred")
    cfg = load_config("unet", [*TINY_UNET, f"data.path={data}", "train.max_steps=1"])
    with pytest.raises(MtlsegError, match=r"file/run: output folder is not writable"):
        train(cfg, blocker / "run")


def _png(path: Path, array) -> None:
    io.imsave(str(path), np.asarray(array, dtype=np.uint8), check_contrast=False)


def test_evaluate_folder_golden_values_and_spacing(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth = np.zeros((4, 4), np.uint8)
    truth[0, :4] = 1  # class 1: 4 pixels
    truth[3, 2:] = 2  # class 2: 2 pixels
    guess = np.zeros((4, 4), np.uint8)
    guess[0, :3] = 1  # 3 of them
    guess[1, 0] = 1  # and one wrong; class 2 missed
    _png(gt / "a.png", truth), _png(pred / "a.png", guess)
    _png(gt / "b.png", truth), _png(pred / "b.png", truth)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2}}))
    rows, summary = evaluate_folder(pred, gt, labels)
    a, b = rows
    assert a["dice/one"] == pytest.approx(0.75) and a["iou/one"] == pytest.approx(0.6)
    assert a["dice/two"] == 0 and a["hd95/two"] == pytest.approx(np.hypot(4, 4))
    assert b["dice/mean"] == 1 and b["hd95/mean"] == 0
    assert summary["metrics"]["dice/one"]["mean"] == pytest.approx(0.875)
    assert summary["worst"][0]["case"] == "a"
    # NIfTI: HD95 in the header's spacing (3 mm between slices)
    vol_t = np.zeros((6, 6, 3), np.uint8)
    vol_p = np.zeros((6, 6, 3), np.uint8)
    vol_t[2, 2, 0], vol_p[2, 2, 1] = 1, 1
    affine = np.diag([0.5, 0.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(vol_t, affine), str(gt / "c.nii.gz"))
    nib.save(nib.Nifti1Image(vol_p, affine), str(pred / "c.nii.gz"))
    rows, _ = evaluate_folder(pred, gt, labels)
    assert rows[2]["case"] == "c" and rows[2]["hd95/one"] == pytest.approx(3.0)
    out = tmp_path / "scores.json"
    assert (
        main(
            [
                "evaluate-folder",
                "--pred",
                str(pred),
                "--gt",
                str(gt),
                "--labels",
                str(labels),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "worst cases by mean Dice" in printed and "3 case(s)" in printed
    assert (tmp_path / "scores_cases.csv").read_text().count("\n") == 4
    assert json.loads(out.read_text())["num_cases"] == 3


@pytest.mark.parametrize(
    "empty, two, mean",
    [("exclude", 0.0, 0.5), ("one", 0.5, 0.75), ("zero", 0.0, 0.5)],
)
def test_evaluate_folder_follows_the_empty_class_convention(tmp_path, empty, two, mean):
    """Case a: class two in neither mask; case b: class two predicted, absent in the truth."""
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth = np.zeros((4, 4), np.uint8)
    truth[0] = 1
    hallucinated = truth.copy()
    hallucinated[3, 3] = 2
    _png(gt / "a.png", truth), _png(pred / "a.png", truth)
    _png(gt / "b.png", truth), _png(pred / "b.png", hallucinated)
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "one": 1, "two": 2}}))
    out = tmp_path / "scores.json"
    argv = ["evaluate-folder", "--pred", str(pred), "--gt", str(gt), "--labels", str(labels)]
    assert main([*argv, "--empty", empty, "--out", str(out), "--no-hd95"]) == 0
    flat = json.loads(out.read_text())
    assert flat["dice/one"] == 1.0
    assert flat["dice/two"] == pytest.approx(two) and flat["dice/mean"] == pytest.approx(mean)
    cases = json.loads((tmp_path / "scores_cases.json").read_text())
    assert cases["protocol"]["empty"] == empty
    a = next(r for r in cases["cases"] if r["case"] == "a")
    header, first = (tmp_path / "scores_cases.csv").read_text().splitlines()[:2]
    assert header.endswith(",protocol,empty") and first.endswith(f",2,{empty}")
    assert a["dice/two"] == {"exclude": None, "one": 1.0, "zero": 0.0}[empty]  # NaN: null


def test_evaluate_folder_names_the_bad_file(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    _png(gt / "a.png", np.zeros((4, 4))), _png(gt / "b.png", np.zeros((4, 4)))
    _png(pred / "a.png", np.zeros((4, 5)))
    with pytest.raises(DataError, match=r"gt/b.png: no prediction b\.\*"):
        evaluate_folder(pred, gt)
    _png(pred / "b.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"pred/a.png: size \(1, 4, 5\) differs"):
        evaluate_folder(pred, gt)
    _png(pred / "a.png", np.full((4, 4), 7))
    _png(gt / "a.png", np.full((4, 4), 2))
    with pytest.raises(DataError, match=r"pred/a.png: label value\(s\) \[7\] not in the classes"):
        evaluate_folder(pred, gt)
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(tmp_path / 'nowhere'))}: folder does not exist$"
    ):
        evaluate_folder(tmp_path / "nowhere", gt)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("not a mask")
    with pytest.raises(DataError, match=r"text: no mask files \(\.png, \.jpg, .*, \.nii\)$"):
        evaluate_folder(tmp_path / "text", gt)


def test_evaluate_folder_reads_0_255_masks_as_binary_thresholded_at_127(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth = np.zeros((4, 4), np.uint8)
    truth[0, :2] = 255
    guess = np.zeros((4, 4), np.uint8)
    guess[0, :2] = 128  # above 127: foreground
    guess[3, 3] = 127  # not above: background
    _png(gt / "a.png", truth), _png(pred / "a.png", guess)
    rows, summary = evaluate_folder(pred, gt, with_hd95=False)
    assert rows[0]["dice/foreground"] == 1.0, "0/255 masks: two classes, not 256"
    assert [k for k in summary["metrics"] if k.startswith("dice/")] == [
        "dice/background",
        "dice/foreground",
        "dice/mean",
    ]


def test_evaluate_folder_thresholds_jpeg_ground_truth_above_127(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth = np.zeros((16, 32), np.uint8)
    truth[:, :16] = 128  # foreground: above 127
    truth[:8, 16:] = 127  # background: not above; 8 x 8 blocks, so the JPEG keeps them exact
    io.imsave(str(gt / "a.jpg"), truth, check_contrast=False)
    assert np.array_equal(io.imread(str(gt / "a.jpg")), truth)
    _png(pred / "a.png", np.where(truth == 128, 255, 0))
    rows, _ = evaluate_folder(pred, gt, with_hd95=False)
    assert rows[0]["dice/foreground"] == 1.0, "JPEG masks are binary at > 127, as training reads"


def test_evaluate_folder_classes_from_values_or_dataset_json(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth = np.zeros((4, 4), np.uint8)
    truth[0, 0], truth[1, 1] = 1, 3  # value 2 never occurs: still a class
    _png(gt / "a.png", truth), _png(pred / "a.png", truth)
    rows, _ = evaluate_folder(pred, gt, with_hd95=False)
    assert [k for k in rows[0] if k.startswith("dice/")] == [
        "dice/background",
        "dice/class1",
        "dice/class2",
        "dice/class3",
        "dice/mean",
    ]
    _png(gt / "a.png", np.zeros((4, 4))), _png(pred / "a.png", np.zeros((4, 4)))
    rows, _ = evaluate_folder(pred, gt, with_hd95=False)
    assert "dice/foreground" in rows[0], "all background: a binary mask, two classes"
    labels = tmp_path / "dataset.json"
    labels.write_text(json.dumps({"labels": {"background": 0, "z": 2, "a": 1}}))
    rows, _ = evaluate_folder(pred, gt, labels, with_hd95=False)
    assert [k for k in rows[0] if k.startswith("dice/")] == [
        "dice/background",
        "dice/a",
        "dice/z",
        "dice/mean",
    ]
    labels.write_text(json.dumps({"labels": {"background": 0, "a": 2}}))
    with pytest.raises(DataError, match=r"dataset.json: label values must be 0..N-1, got \[0, 2\]"):
        evaluate_folder(pred, gt, labels)
    labels.write_text(json.dumps({"classes": []}))
    with pytest.raises(DataError, match="dataset.json: cannot read its 'labels' \\('labels'\\)"):
        evaluate_folder(pred, gt, labels)


def test_evaluate_folder_lists_at_most_20_problems_and_5_bad_values(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    for i in range(25):
        _png(gt / f"c{i:02d}.png", np.zeros((4, 4)))
    _png(pred / "other.png", np.zeros((4, 4)))  # 25 missing, 1 extra: the first 20 said
    with pytest.raises(DataError) as err:
        evaluate_folder(pred, gt)
    lines = str(err.value).splitlines()
    assert len(lines) == 20 and lines[0].endswith(f"gt/c00.png: no prediction c00.* in {pred}")
    for f in [*gt.iterdir(), *pred.iterdir()]:
        f.unlink()
    _png(gt / "a.png", np.arange(16).reshape(4, 4) % 2)
    _png(pred / "a.png", np.arange(16).reshape(4, 4) % 2 + 7 * (np.arange(16).reshape(4, 4) > 9))
    with pytest.raises(
        DataError, match=r"pred/a.png: label value\(s\) \[7, 8\] not in the classes"
    ):
        evaluate_folder(pred, gt)


def test_evaluate_folder_scores_a_nifti_volume_as_one_case_and_refuses_fractions(tmp_path):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth = np.zeros((4, 4, 2), np.uint8)
    truth[1:3, 1:3, :] = 1  # 4 voxels in each of 2 slices
    guess = truth.copy()
    guess[:, :, 1] = 0  # the second slice missed
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(truth, affine), str(gt / "v.nii.gz"))
    nib.save(nib.Nifti1Image(guess.astype(np.float32), affine), str(pred / "v.nii.gz"))
    rows, _ = evaluate_folder(pred, gt)
    assert rows[0]["dice/class1"] == pytest.approx(2 * 4 / (4 + 8)), "one 3D case, not a slice"
    nib.save(nib.Nifti1Image(guess * 0.5, affine), str(pred / "v.nii.gz"))
    with pytest.raises(DataError, match=r"pred/v.nii.gz: mask has non-integer values"):
        evaluate_folder(pred, gt)


def test_score_case_ignores_a_class_and_follows_conventions():
    truth = np.array([[0, 1], [2, 2]])
    pred = np.array([[1, 1], [2, 0]])
    s = score_case(pred, truth, ["bg", "a", "b"], with_hd95=False)
    assert s["dice/a"] == pytest.approx(2 / 3) and s["dice/b"] == pytest.approx(2 / 3)
    s = score_case(pred, truth, ["void", "a", "b"], with_hd95=False, ignore_index=0)
    assert s["dice/a"] == 1.0, "the pixel labelled 0 is not counted"


def test_score_case_ignoring_a_foreground_class_and_slice_dice_of_volumes():
    truth = np.array([[0, 1], [2, 2]])
    pred = np.array([[1, 1], [2, 0]])
    s = score_case(pred, truth, ["bg", "a", "void"], with_hd95=False, ignore_index=2)
    assert s["dice/a"] == pytest.approx(2 / 3) and math.isnan(s["dice/void"])
    assert s["dice/mean"] == pytest.approx(2 / 3), "the ignored class is not in the mean"
    assert not any(k.startswith("slice_dice") for k in s), "an image has no slice column"
    one = score_case(pred[None], truth[None], ["bg", "a", "void"], with_hd95=False)
    assert not any(k.startswith("slice_dice") for k in one), "nor has a one-slice volume"
    # two slices: class a in both truths, predicted in the first only; class b only in slice 0
    t = np.array([[[1, 2], [0, 0]], [[1, 0], [0, 0]]])
    p = np.array([[[1, 2], [0, 0]], [[0, 0], [0, 0]]])
    v = score_case(p, t, ["bg", "a", "b"], with_hd95=False, empty="zero")
    assert v["dice/a"] == pytest.approx(2 / 3)  # 3D: tp 1, fn 1
    assert v["slice_dice/a"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert v["slice_dice/b"] == 0.5, "slice 1 has no b at all: 0 under empty='zero'"
    w = score_case(p, t, ["bg", "a", "b"], with_hd95=False, ignore_index=1)
    assert math.isnan(w["slice_dice/a"]), "an ignored class counts in no slice"
    with pytest.raises(
        ValueError, match=r"^prediction \(2, 2\) and truth \(1, 2, 2\) differ in size$"
    ):
        score_case(pred, truth[None], ["bg", "a"])
