"""HOG pseudo-labels: equal to scikit-image on real images, batched, and golden cases."""

import numpy as np
import pytest
import torch
from skimage.feature import hog

from mtlseg.errors import ConfigError
from mtlseg.targets.hog import HOGConfig, hog_descriptor, hog_dim

SKIMAGE_NORMS = {"l1": "L1", "l1-sqrt": "L1-sqrt", "l2": "L2", "l2-hys": "L2-Hys"}


@pytest.mark.parametrize("norm", sorted(SKIMAGE_NORMS))
@pytest.mark.parametrize("cell,bins", [(16, 9), (8, 8), (16, 8), (12, 7)])
def test_equals_skimage_on_real_images(kvasir_images, norm, cell, bins):
    cfg = HOGConfig(resize=256, cell=cell, bins=bins, norm=norm)
    images = kvasir_images.astype(np.float64)  # both sides in double: no bin-boundary rounding
    ours = hog_descriptor(torch.from_numpy(images)[:, None], cfg).numpy()
    reference = np.stack(
        [
            hog(
                im,
                orientations=bins,
                pixels_per_cell=(cell, cell),
                cells_per_block=(1, 1),
                block_norm=SKIMAGE_NORMS[norm],
                feature_vector=True,
            )
            for im in images
        ]
    )
    assert ours.shape == reference.shape == (len(kvasir_images), hog_dim(cfg))
    assert np.abs(ours - reference).max() < 1e-4


@pytest.mark.parametrize("bins", [8, 9])
def test_raw_histograms_equal_skimage_on_many_real_images(kvasir_root, bins):
    """Unnormalised histograms, recovered from scikit-image's one-cell L1 blocks: the per-cell
    magnitude sum does not depend on the binning, so ``L1 * (sum + eps)`` undoes the norm."""
    from skimage import io

    files = sorted((kvasir_root / "images").iterdir())[:48]
    images = np.stack([io.imread(f).astype(np.float64).mean(-1) / 255 for f in files])
    cfg = HOGConfig(resize=256, cell=16, bins=bins, norm="none")
    raw = (
        hog_descriptor(torch.from_numpy(images)[:, None], cfg).numpy().reshape(len(files), -1, bins)
    )
    l1 = np.stack(
        [
            hog(
                im,
                orientations=bins,
                pixels_per_cell=(16, 16),
                cells_per_block=(1, 1),
                block_norm="L1",
            )
            for im in images
        ]
    ).reshape(raw.shape)
    reference = l1 * (raw.sum(-1, keepdims=True) + 1e-5)
    assert np.abs(raw - reference).max() < 1e-4


def test_float32_default_config_matches_skimage(kvasir_images):
    """The training path (float32, default 512-dim config) agrees with the reference too."""
    cfg = HOGConfig()
    ours = hog_descriptor(torch.from_numpy(kvasir_images)[:, None], cfg).numpy()
    from skimage.transform import resize

    reference = [
        hog(
            resize(im, (128, 128), anti_aliasing=True),
            orientations=8,
            pixels_per_cell=(16, 16),
            cells_per_block=(1, 1),
            block_norm="L2-Hys",
        )
        for im in kvasir_images
    ]
    # resizing differs slightly between torch and skimage: compare descriptors, not pixels
    cos = [
        np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)
        for a, b in zip(ours, reference, strict=True)
    ]
    assert ours.shape == (8, 512) and min(cos) > 0.95


def test_orientations_on_a_bin_edge_follow_skimage():
    """Gradients with |dx| == |dy| give exactly 45 degrees, an edge when bins = 8: the
    bin starting there takes it, as scikit-image's ``start <= angle < end`` does."""
    image = np.add.outer(np.arange(16.0), np.arange(16.0)) / 30  # a diagonal ramp
    ours = hog_descriptor(
        torch.from_numpy(image)[None, None], HOGConfig(resize=16, cell=16, bins=8, norm="l1")
    )
    ref = hog(
        image, orientations=8, pixels_per_cell=(16, 16), cells_per_block=(1, 1), block_norm="L1"
    )
    assert ours[0].argmax() == 2 and np.abs(ours[0].numpy() - ref).max() < 1e-6


def test_batch_equals_single_images(kvasir_images):
    x = torch.from_numpy(kvasir_images)[:, None]
    batched = hog_descriptor(x)
    single = torch.cat([hog_descriptor(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(batched, single, atol=1e-6)


def test_colour_images_use_channel_mean(kvasir_images):
    grey = torch.from_numpy(kvasir_images)[:2, None]
    rgb = torch.cat([grey * 0.5, grey, grey * 1.5], dim=1)
    assert torch.allclose(hog_descriptor(rgb), hog_descriptor(grey), atol=1e-5)


def test_vertical_edge_votes_into_the_zero_degree_bin():
    image = torch.zeros(1, 1, 32, 32)
    image[..., 16:] = 1.0  # intensity changes along columns only: gradient orientation 0
    cfg = HOGConfig(resize=32, cell=8, bins=6, norm="none")
    hist = hog_descriptor(image, cfg).reshape(4, 4, 6)
    assert hist[:, :, 1:].abs().max() == 0
    # the edge lies between columns 15 and 16: only the cells of column 1 and 2 see it
    assert (hist[:, 1:3, 0] > 0).all() and (hist[:, [0, 3], 0] == 0).all()
    # columns 15 and 16 have |g| = 1: one pixel per row of each 8x8 cell -> 8 / 64
    assert torch.allclose(hist[:, 1:3, 0], torch.full((4, 2), 8 / 64))


def test_diagonal_edge_votes_into_its_nearest_bin():
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = (rows + cols > 31).float()[None, None]  # gradient along (1, 1): 45 degrees
    hist = hog_descriptor(image, HOGConfig(resize=32, cell=32, bins=4, norm="none"))[0]
    assert hist.argmax() == 1  # bins [0,45), [45,90), ...: 45 lies in bin 1
    assert hist[1] > 0.95 * hist.sum()  # the rest comes from the zero-padded border


def test_resizes_to_the_configured_size():
    out = hog_descriptor(torch.rand(3, 1, 50, 70), HOGConfig(resize=64, cell=16, bins=8))
    assert out.shape == (3, 4 * 4 * 8)


def test_invalid_config_is_rejected_at_the_bounds():
    with pytest.raises(ConfigError, match="'l3' unknown; valid: none, l1, l1-sqrt, l2, l2-hys$"):
        HOGConfig(norm="l3")
    with pytest.raises(ConfigError, match="need 2 <= cell <= resize, got cell=16, resize=8"):
        HOGConfig(resize=8, cell=16)
    with pytest.raises(ConfigError, match="got cell=1"):
        HOGConfig(cell=1)
    with pytest.raises(ConfigError, match="bins must be >= 1, got 0"):
        HOGConfig(bins=0)
    # the bounds themselves are valid: 2-pixel cells (4 x 4 cells x 8 bins), one cell per
    # image (8 bins), one bin (8 x 8 cells of the default 128 px, 16 px cells)
    for cfg, dims in (
        (HOGConfig(resize=8, cell=2), 128),
        (HOGConfig(resize=8, cell=8), 8),
        (HOGConfig(bins=1), 64),
    ):
        assert hog_descriptor(torch.rand(1, 1, 8, 8), cfg).shape == (1, dims)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orientation_is_unsigned_in_0_180_degrees(dtype):
    from mtlseg.targets.hog import _orientation

    # (d row, d col) -> degrees: a leftward gradient (0, -1) is 0, never 180 (bin overflow)
    rows = torch.tensor([0.0, 1.0, 0.0, -1.0, 1.0, -1.0, 1.0], dtype=dtype)
    cols = torch.tensor([1.0, 0.0, -1.0, 0.0, 1.0, 1.0, -1.0], dtype=dtype)
    got = _orientation(rows, cols, 9)
    assert got.tolist() == pytest.approx([0.0, 90.0, 0.0, 90.0, 45.0, 135.0, 135.0], abs=1e-5)
