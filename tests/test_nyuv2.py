"""Paper 004's own data layout (NYUv2 as the MTAN authors preprocess it): .npy arrays with
depth and normals, unlabelled pixels ignored, dense targets through augmentation.

NYUv2 is not on this machine: the arrays are made from real Kvasir-SEG images and masks
(polyp and background become two NYUv2 classes with their own depth and normal, and a strip
of every image is unlabelled with no reading), so every target is known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mtlseg.config import DataConfig
from mtlseg.data.sources import discover
from mtlseg.data.transforms import Augment2D
from mtlseg.engine.data import prepare_data
from mtlseg.engine.inference import evaluate, load_module
from mtlseg.engine.train import train
from mtlseg.errors import DataError
from mtlseg.losses import SEG_LOSSES
from mtlseg.metrics.segmentation import SegmentationMetrics
from mtlseg.settings import load_config
from tests.conftest import KVASIR, require_data, validation_of

POLYP, WALL = 6, 11  # NYUv2-13 'objects' and 'wall' (raw labels, 0-based)
DEPTH = {"polyp": 1.5, "wall": 3.0}
NORMAL = {"polyp": (0.6, 0.0, 0.8), "wall": (0.0, 0.0, 1.0)}


def make_nyuv2(root: Path, n_train: int = 8, n_val: int = 4, size=(24, 32)) -> Path:
    """MTAN's NYUv2 layout from the first Kvasir-SEG images (see the module docstring)."""
    from skimage import io, transform

    require_data(KVASIR)
    files = sorted((KVASIR / "images").iterdir())[: n_train + n_val]
    for i, path in enumerate(files):
        split, j = ("train", i) if i < n_train else ("val", i - n_train)
        image = transform.resize(io.imread(path), size, anti_aliasing=True).astype(np.float32)
        polyp = transform.resize(io.imread(KVASIR / "masks" / path.name)[..., 0], size) > 0.5
        label = np.where(polyp, POLYP, WALL).astype(np.float32)
        depth = np.where(polyp, DEPTH["polyp"], DEPTH["wall"]).astype(np.float32)[..., None]
        normal = np.where(polyp[..., None], NORMAL["polyp"], NORMAL["wall"]).astype(np.float32)
        label[:3], depth[:3], normal[:3] = -1, 0, 0  # unlabelled, no reading
        for name, array in (
            ("image", image),
            ("label", label),
            ("depth", depth),
            ("normal", normal),
        ):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            np.save(root / split / name / f"{j}.npy", array)
    return root


@pytest.fixture
def nyuv2(tmp_path) -> Path:
    return make_nyuv2(tmp_path / "nyuv2")


def test_format_reads_its_split_shifts_labels_and_carries_dense_arrays(nyuv2):
    index = discover(nyuv2)
    assert index.format == "nyuv2" and len(index.cases) == 12
    assert index.class_names[0] == "unlabelled" and len(index.class_names) == 14
    data = prepare_data(DataConfig(path=str(nyuv2), image_size=16, augment="none"))
    assert data.split["val"] == [f"val_{i}" for i in range(4)]
    assert "own train/val folders" in data.split_source
    sample = data.train[0]
    raw = np.load(nyuv2 / "train" / "label" / "0.npy")
    assert set(sample["mask"].unique().tolist()) <= {0, POLYP + 1, WALL + 1}
    assert (sample["mask"][0] == 0).all(), "label -1 (first rows) becomes class 0"
    assert (raw[:3] == -1).all()
    depth, normal = sample["dense"]["depth"], sample["dense"]["normal"]
    assert depth.shape == (1, 16, 16) and normal.shape == (3, 16, 16)
    # inside a region (a pixel off its boundary) labels and dense targets agree exactly: both
    # are resized on one grid (labels by weight, dense arrays by centred nearest)
    on = torch.from_numpy(ndimage.binary_erosion((sample["mask"] == POLYP + 1).numpy()))
    assert on.sum() > 0
    assert torch.all(depth[0][on] == DEPTH["polyp"])
    assert torch.allclose(normal[:, on].T, torch.tensor(NORMAL["polyp"]))
    assert torch.all(depth[0][sample["mask"] == 0] == 0)


def _constant(fill: float, channels: int, size: int = 16) -> torch.Tensor:
    return torch.full((channels, size, size), fill)


def test_normals_flip_sign_and_depth_divides_by_the_zoom():
    image = torch.arange(16.0).repeat(16, 1)[None]  # increases to the right
    mask = torch.zeros(16, 16, dtype=torch.long)
    normal = torch.tensor([0.6, -0.3, 0.74])[:, None, None].expand(3, 16, 16).clone()
    flips = Augment2D("flips", {"depth": "depth", "normal": "vector"})
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        out, _, _, dense = flips(image, mask, None, {"depth": _constant(2.0, 1), "normal": normal})
        flipped = bool(out[0, 0, 0] > out[0, 0, -1])
        seen.add(flipped)
        x = dense["normal"][0].unique()
        assert x.tolist() == pytest.approx([-0.6 if flipped else 0.6]), "x follows the flip"
        assert torch.allclose(dense["normal"][1:], normal[1:]), "y and z do not"
        assert torch.all(dense["depth"] == 2.0), "a flip does not change depth"
    assert seen == {True, False}

    zoom = Augment2D("scale-flip", {"depth": "depth", "normal": "vector"})
    values = []
    for seed in range(6):
        torch.manual_seed(seed)
        _, _, _, dense = zoom(image, mask, None, {"depth": _constant(2.0, 1), "normal": normal})
        read = dense["depth"][dense["depth"] > 0].unique()
        assert read.numel() == 1, "one zoom per image, no blending (nearest)"
        values.append(float(read))
        assert torch.allclose(dense["normal"][2][dense["depth"][0] > 0], normal[2, 0, 0])
    assert all(2.0 / 1.5 - 1e-4 <= v <= 2.0 + 1e-6 for v in values)
    assert min(values) < 1.9, "a zoom-in brings the scene closer"


def test_rotating_augmentation_is_refused_for_vector_targets(nyuv2):
    with pytest.raises(DataError, match="scale-flip"):
        Augment2D("strong", {"normal": "vector"})
    with pytest.raises(DataError, match="cannot follow a rotation"):
        prepare_data(DataConfig(path=str(nyuv2), image_size=16, augment="mild"))
    assert Augment2D("strong", {"depth": "depth"}) is not None  # depth alone may rotate


def test_missing_and_mismatched_arrays_name_the_file(nyuv2):
    (nyuv2 / "train" / "depth" / "3.npy").unlink()
    with pytest.raises(DataError, match=r"train/image/3.npy: no depth/3.npy"):
        discover(nyuv2)
    np.save(nyuv2 / "train" / "depth" / "3.npy", np.ones((10, 10), np.float32))
    with pytest.raises(DataError, match=r"train/depth/3.npy: depth array size 10x10 differs"):
        prepare_data(DataConfig(path=str(nyuv2), image_size=16, augment="none"))
    np.save(nyuv2 / "train" / "depth" / "3.npy", np.ones((24, 32), np.float32))
    np.save(nyuv2 / "val" / "label" / "1.npy", np.full((24, 32), 13.0, np.float32))
    with pytest.raises(DataError, match=r"val/label/1.npy: label value\(s\) \[13\]"):
        prepare_data(DataConfig(path=str(nyuv2), image_size=16, augment="none"))
    (nyuv2 / "val" / "label" / "1.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match=r"val/label/1.npy: unreadable or corrupt .npy"):
        prepare_data(DataConfig(path=str(nyuv2), image_size=16, augment="none"))


@pytest.mark.parametrize("name", ["ce", "dice-ce", "ce-iou"])
def test_ignored_pixels_change_neither_loss_nor_gradient(name):
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 8, 8))
    labels[:, :2] = 0  # ignored
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    other = logits.detach().clone()
    other[:, :, :2] = torch.randn(2, 4, 2, 8) * 5  # anything at the ignored pixels
    other.requires_grad_(True)
    loss = SEG_LOSSES.get(name)(ignore_index=0)
    a, b = loss(logits, labels), loss(other, labels)
    assert a.item() == pytest.approx(b.item(), rel=1e-5)
    a.backward()
    assert torch.all(logits.grad[:, :, :2] == 0), "no gradient reaches ignored pixels"
    assert loss(logits, labels).item() != pytest.approx(
        SEG_LOSSES.get(name)()(logits, labels).item()
    )


def test_metrics_leave_ignored_pixels_and_class_out():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 2, 2]]])
    pred = torch.tensor([[[2, 1, 1, 1], [1, 2, 2, 2]]])  # wrong only where target is 0
    m = SegmentationMetrics(["unlabelled", "a", "b"], ignore_index=0)
    m.update(pred, target, torch.tensor([0]))
    out = m.compute()
    assert out["dice/a"] == 1.0 and out["dice/b"] == 1.0 and out["pixel_accuracy"] == 1.0
    plain = SegmentationMetrics(["unlabelled", "a", "b"])
    plain.update(pred, target, torch.tensor([0]))
    assert plain.compute()["dice/a"] < 1.0 and plain.compute()["pixel_accuracy"] == 0.5
    third = SegmentationMetrics(["bg", "a", "void"], ignore_index=2)
    third.update(torch.tensor([[[0, 1, 0, 0]]]), torch.tensor([[[0, 1, 2, 2]]]), torch.tensor([0]))
    assert third.compute()["dice/mean"] == 1.0, "the ignored class is not in the mean"


TINY_RESNET = [
    "model.params.layers=[1,1,1,1]",
    "model.params.width=4",
    "model.params.pyramid=[1,2]",
    "data.image_size=32",
    "train.batch_size=4",
    "train.progress_bar=false",
    "train.max_minutes=null",
    "data.num_workers=0",
]


def test_recipe_trains_depth_and_normals_from_files_and_evaluates(nyuv2, tmp_path):
    cfg = load_config(
        "nyuv2-geometry",
        [
            *TINY_RESNET,
            f"data.path={nyuv2}",
            "train.max_steps=40",
            "train.val_every=40",
            "train.lr=1e-2",
        ],
    )
    result = train(cfg, tmp_path / "run")
    tasks = {t.name: t for t in load_module(result.best_checkpoint).tasks}
    assert tasks["normals"].out_dim() == 3 and tasks["depth"].out_dim() == 1, "from the files"
    m = evaluate(result.best_checkpoint, str(nyuv2), "val")
    logged = validation_of(result.best_checkpoint)  # a re-evaluation reproduces validation
    assert m["dice/mean"] == pytest.approx(logged["val/dice"], abs=1e-6)
    assert "dice/unlabelled" in m
    # depth is 1.5 or 3 m: an untrained head (about 0) errs by >= 1.5 m
    assert m["task/depth/abs_err"] < 1.5
    assert m["task/normals/mean_angle"] < 90


def test_file_tasks_refuse_data_without_the_arrays(acdc_small, tmp_path):
    cfg = load_config(
        "unet-geometry",
        [
            "model.params.channels=[4,8]",
            "data.image_size=16",
            f"data.path={acdc_small}",
            "tasks.normals.params.source=file",
            "train.max_steps=1",
        ],
    )
    with pytest.raises(DataError, match="reads dense 'normal' arrays, the dataset has none"):
        train(cfg, tmp_path / "run")
