"""Label maps are resized on their images' pixel grid (mtlseg.data.resample), everywhere:
slices, volumes, dense arrays, deep-supervision targets, and after augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from mtlseg.config import DataConfig, build_dataclass, with_saved_defaults
from mtlseg.data.resample import resize_labels, resize_linear, resize_slices
from mtlseg.errors import ConfigError
from mtlseg.settings import load_config

DEFAULT_RULE = DataConfig().label_resize
# (input size, output size): downscale factors 2, 3.4, 4 and an odd-sized input (97 -> 32)
GRIDS = [(96, 48), (163, 48), (128, 32), (97, 32)]


def _image_edge(profile: np.ndarray) -> float:
    """Where a resized 0 -> 1 step crosses 0.5, in output pixels (pixel k spans [k, k + 1])."""
    k = int(np.nonzero(profile >= 0.5)[0][0])
    v0, v1 = profile[k - 1], profile[k]
    return k - 0.5 + (0.5 - v0) / (v1 - v0)


def _edge_errors(rule: str, n: int, size: int, axis: int) -> list[tuple[float, float]]:
    """(image edge, label edge - image edge) for a step at every source position, along
    ``axis`` (1: rows, 2: columns) of one (1, n, n) slice."""
    out = []
    for x0 in range(12, n - 12):
        step = np.zeros((1, n, n), np.uint8)
        step[(slice(None),) * axis + (slice(x0, None),)] = 1
        image, label = resize_slices(step[..., None].astype(np.float32), step, size, rule)
        line = (slice(None), size // 2) if axis == 2 else (slice(None), slice(None), size // 2)
        profile, labels = image[0, 0][line[1:]].numpy(), label[0][line[1:]].numpy()
        edge = _image_edge(profile)
        out.append((edge, int(np.nonzero(labels)[0][0]) - edge))
    return out


@pytest.mark.parametrize("axis", [1, 2])
@pytest.mark.parametrize(("n", "size"), GRIDS)
def test_a_label_edge_sits_where_its_image_edge_sits(n, size, axis):
    errors = _edge_errors(DEFAULT_RULE, n, size, axis)
    # a hard label can only change at a pixel boundary: at most half a pixel from the image's
    # edge, within a quarter where the image's edge is within a quarter of a boundary
    assert max(abs(e) for _, e in errors) <= 0.5 + 1e-4
    near = [abs(e) for edge, e in errors if abs(edge - round(edge)) <= 0.25]
    assert len(near) >= 10 and max(near) <= 0.25 + 1e-4
    # and no shift: off an exact tie (an edge through a pixel centre) the errors average out
    untied = [e for edge, e in errors if abs(abs(edge - round(edge)) - 0.5) > 1e-3]
    assert abs(np.mean(untied)) < 0.05


@pytest.mark.parametrize(("n", "size"), GRIDS[1:])
def test_the_earlier_floor_nearest_rule_is_shifted(n, size):
    """What the test above catches: torch's ``nearest`` (the rule of earlier runs) puts the
    label's edge up to a pixel away, shifted one way."""
    errors = _edge_errors("nearest", n, size, 2)
    assert max(abs(e) for _, e in errors) > 0.75
    assert np.mean([e for _, e in errors]) > 0.3


def test_the_dataset_resizes_masks_on_its_images_grid(tmp_path):
    """Through prepare_data (PNG folder, 163 px -> 48 px): every slice's mask edge is its
    image's edge rounded to a pixel boundary."""
    from mtlseg.engine.data import prepare_data

    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    for i, x0 in enumerate(range(40, 130, 9)):
        step = np.zeros((163, 163), np.uint8)
        step[:, x0:] = 255
        Image.fromarray(step).convert("RGB").save(tmp_path / "images" / f"c{i}.png")
        Image.fromarray(step).save(tmp_path / "masks" / f"c{i}.png")
    data = prepare_data(
        DataConfig(path=str(tmp_path), image_size=48, augment="none", split_mode="case")
    )
    for ds in (data.train, data.val):
        for image, mask in zip(ds.images.float(), ds.masks, strict=True):
            row = image[0, 24].numpy()
            unit = (row - row.min()) / (row.max() - row.min())
            edge = _image_edge(unit)
            assert abs(int(np.nonzero(mask[24].numpy())[0][0]) - edge) <= 0.5 + 1e-3


def test_deep_supervision_targets_of_a_volume_follow_the_rule():
    """3D class indices and 2D binary maps at a coarser output: a step at source position 9
    of 16 lands at 9 / 4 = 2.25 -> boundary 2 (floor nearest: 3), along every axis."""
    from mtlseg.tasks.segmentation import _resize_target

    for axis in (1, 2, 3):
        labels = torch.zeros(1, 16, 16, 16, dtype=torch.long)
        labels[(slice(None),) * axis + (slice(9, None),)] = 2
        small = _resize_target(labels, torch.Size((4, 4, 4)), "linear")
        expected = torch.zeros(1, 4, 4, 4, dtype=torch.long)
        expected[(slice(None),) * axis + (slice(2, None),)] = 2
        assert torch.equal(small, expected), axis
        legacy = _resize_target(labels, torch.Size((4, 4, 4)), "nearest")
        assert legacy.select(axis, 2).max() == 0  # the old rule's shift
    maps = torch.zeros(1, 2, 16, 16)
    maps[:, 0, :, 9:] = 1
    maps[:, 1, 9:, :] = 1
    small = _resize_target(maps, torch.Size((4, 4)), "linear")
    assert small[0, 0, 0].tolist() == [0, 0, 1, 1] and small[0, 1, :, 0].tolist() == [0, 0, 1, 1]


def test_a_volume_is_resized_one_axis_at_a_time_as_torch_resizes_a_plane():
    """A volume that varies along one axis only resizes as torch's antialiased bilinear
    resizes that profile, whichever axis it is (the separable 3D path)."""
    torch.manual_seed(0)
    profile = torch.rand(20)
    for axis in (2, 3, 4):
        shape = [1, 1, 6, 6, 6]
        shape[axis] = 20
        volume = profile.view([20 if a == axis else 1 for a in range(5)]).expand(shape)
        size = [3, 3, 3]
        size[axis - 2] = 7
        out = resize_linear(volume, size)
        line = F.interpolate(
            profile.view(1, 1, 1, 20), size=(1, 7), mode="bilinear", antialias=True
        ).flatten()
        index = [0, 0, 1, 1, 1]
        index[axis] = slice(None)
        assert torch.allclose(out[tuple(index)], line, atol=1e-6), axis


def test_a_column_one_pixel_wide_is_resized_along_its_length():
    """torch's antialiased bilinear is wrong for inputs one pixel wide; resize_linear is not.
    By hand, at 2x the triangle filter spans 2 source pixels each side, clipped at the border:
    output 0 = (0.75 * 0 + 0.75 * 1 + 0.25 * 2) / 1.75."""
    column = torch.arange(8.0).view(1, 1, 8, 1)
    assert resize_linear(column, (4, 1)).flatten().tolist() == pytest.approx(
        [1.25 / 1.75, 2.5, 4.5, 11 / 1.75]
    )


def test_labels_keep_their_values_and_ties_go_to_the_lower_class():
    labels = torch.tensor([[[0, 0, 255, 255], [7, 7, 255, 255]]])  # an ignore value, 255
    assert resize_labels(labels, (1, 2), "linear").tolist() == [[[0, 255]]]
    # a pixel split half and half between classes 3 and 5 takes 3
    assert resize_labels(torch.tensor([[[5, 3]]]), (1, 1), "linear").tolist() == [[[3]]]


def test_resolution_cap_on_real_acdc_labels(acdc_root):
    """A perfect prediction at 96 px scores >= 0.94 per-volume Dice on ACDC's val cases
    (0.89 with the earlier floor-nearest rule)."""
    from mtlseg.data.io import read_volume
    from mtlseg.metrics.resolution import resolution_cap

    val = json.loads((acdc_root / "splits.json").read_text())["val"]
    truths = {
        c: read_volume(acdc_root / "labelsTr" / f"{c}.nii.gz")[0][..., 0].astype(np.int64)
        for c in val
    }
    names = ["background", "RV", "MYO", "LV"]
    assert resolution_cap(truths, names, 96, DEFAULT_RULE) >= 0.94
    assert resolution_cap(truths, names, 96, "nearest") < 0.91


@pytest.mark.parametrize("preset", ["flips", "mild", "scale-flip", "strong"])
def test_every_augmentation_moves_a_mask_with_its_image(preset):
    """A bright disc and its mask, 20 draws of the preset: the augmented image thresholded
    midway equals the augmented mask except within 1.5 px of the mask's boundary."""
    from mtlseg.data.transforms import Augment2D

    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 22) ** 2 + (xx - 38) ** 2 < 14**2).astype(np.int64)
    image = torch.from_numpy(disc[None].astype(np.float32) * 4 - 1)
    aug = Augment2D(preset)
    torch.manual_seed(0)
    for _ in range(20):
        a_image, a_mask, _ = aug(image, torch.from_numpy(disc))
        m = a_mask.numpy()
        if m.sum() < 20:  # moved out of the image
            continue
        x = a_image[0].numpy()
        inside, outside = np.median(x[m == 1]), np.median(x[m == 0])
        disagree = (x > (inside + outside) / 2) != (m == 1)
        distance = np.minimum(
            ndimage.distance_transform_edt(m == 1), ndimage.distance_transform_edt(m == 0)
        )
        assert distance[disagree].max(initial=0) <= 1.5, preset


def test_runs_record_their_rule_and_older_ones_read_as_floor_nearest():
    cfg = build_dataclass(DataConfig, {"path": "x"})
    assert cfg.label_resize == "linear"
    old = with_saved_defaults({"data": {"path": "x"}, "tasks": []})
    assert old["data"]["label_resize"] == "nearest"
    assert with_saved_defaults({"data": {"label_resize": "linear"}})["data"]["label_resize"] == (
        "linear"
    )
    with pytest.raises(ConfigError, match="data.label_resize: unknown rule 'bicubic'.*linear"):
        load_config("unet", ["data.label_resize=bicubic"])  # registry names: at load


def test_an_old_run_resumes_only_with_its_own_rule(tmp_path):
    """A run folder whose config.yaml predates the rule resumes with ``nearest`` (what it
    trained with), and a clear error names the key otherwise."""
    import yaml

    from mtlseg.engine.train import check_resumable
    from mtlseg.errors import MtlsegError
    from mtlseg.settings import load_config

    cfg = load_config("unet", ["data.path=x"])
    saved = cfg.to_dict()
    del saved["data"]["label_resize"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(MtlsegError, match="data.label_resize differs"):
        check_resumable(cfg, tmp_path)
    check_resumable(load_config("unet", ["data.path=x", "data.label_resize=nearest"]), tmp_path)
