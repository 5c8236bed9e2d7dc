"""Histogram of Oriented Gradients as a regression pseudo-label (paper 000, section 3.1).

The image is resized to ``resize x resize``, split into non-overlapping ``cell x cell``
patches; per pixel the central differences dx = [1, 0, -1] and dy = [1, 0, -1]^T give the
magnitude sqrt(dx^2 + dy^2) and the unsigned orientation arctan(dy/dx) in [0, 180) degrees,
assigned to the nearest of ``bins`` bins (bin centres at (i + 0.5) * 180 / bins). Each patch's
magnitude-weighted histogram is averaged over the patch area, optionally normalised per
cell, and all patches are concatenated into one vector per image.

Everything is batched tensor arithmetic, so it runs on the training device inside the
training step. With ``norm`` set to one of scikit-image's block norms, the result equals
``skimage.feature.hog(img, orientations=bins, pixels_per_cell=(cell, cell),
cells_per_block=(1, 1), block_norm=...)`` on the same grey image, exactly for float64
input; in float32 a gradient on a bin edge (see ``_orientation``) may vote in the other
neighbouring bin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mtlseg.errors import ConfigError

NORMS = ("none", "l1", "l1-sqrt", "l2", "l2-hys")
_EPS = 1e-5  # scikit-image's block-normalisation epsilon


@dataclass
class HOGConfig:
    """HOG hyper-parameters; the defaults give 8 x 8 cells x 8 bins = 512 dims (paper: ~500)."""

    resize: int = 128
    cell: int = 16
    bins: int = 8
    norm: str = "l2-hys"

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"hog norm {self.norm!r} unknown; valid: {', '.join(NORMS)}")
        if self.cell < 2 or self.resize < self.cell:
            raise ConfigError(
                f"hog: need 2 <= cell <= resize, got cell={self.cell}, resize={self.resize}"
            )
        if self.bins < 1:
            raise ConfigError(f"hog: bins must be >= 1, got {self.bins}")


def hog_dim(cfg: HOGConfig) -> int:
    """Length of the descriptor: (resize // cell)^2 * bins."""
    return (cfg.resize // cfg.cell) ** 2 * cfg.bins


def _gradients(grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences with zero border, as scikit-image's ``_hog_channel_gradient``.

    (B, H, W) -> (g_row, g_col), each (B, H, W). The kernel sign ([1, 0, -1] vs
    [-1, 0, 1]) flips both gradients together, which leaves magnitude and unsigned
    orientation unchanged.
    """
    g_row = torch.zeros_like(grey)
    g_col = torch.zeros_like(grey)
    g_row[:, 1:-1, :] = grey[:, 2:, :] - grey[:, :-2, :]
    g_col[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
    return g_row, g_col


def _orientation(g_row: torch.Tensor, g_col: torch.Tensor, bins: int) -> torch.Tensor:
    """Unsigned orientation arctan(dy / dx) in degrees, [0, 180).

    In float64 (the reference path) angles within 1e-9 degrees of a bin edge are settled
    with NumPy's correctly rounded ``atan2``: 8-bit images make |dy| = |dx| ties common,
    and the bin of a tie depends on the last bit. The float32 training path stays on the
    device; there a tie may fall in either neighbouring bin.
    """
    orientation = torch.atan2(g_row, g_col).mul_(180.0 / math.pi)  # as np.rad2deg
    orientation = torch.where(orientation < 0, orientation + 180.0, orientation)
    orientation = torch.where(orientation >= 180.0, orientation - 180.0, orientation)
    if orientation.dtype == torch.float64:
        width = 180.0 / bins
        near = ((orientation / width) - torch.round(orientation / width)).abs() * width < 1e-9
        if near.any():
            rows, cols = g_row[near].cpu().numpy(), g_col[near].cpu().numpy()
            exact = np.rad2deg(np.arctan2(rows, cols)) % 180.0
            orientation[near] = torch.from_numpy(exact).to(orientation)
    return orientation


def _normalise(hist: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-cell normalisation, (..., bins) -> same; formulas as scikit-image's one-cell blocks."""
    if norm == "none":
        return hist
    if norm in ("l1", "l1-sqrt"):
        out = hist / (hist.abs().sum(-1, keepdim=True) + _EPS)
        return out.sqrt() if norm == "l1-sqrt" else out
    out = hist / torch.sqrt((hist**2).sum(-1, keepdim=True) + _EPS**2)
    if norm == "l2-hys":
        out = out.clamp(max=0.2)
        out = out / torch.sqrt((out**2).sum(-1, keepdim=True) + _EPS**2)
    return out


def hog_descriptor(images: torch.Tensor, cfg: HOGConfig | None = None) -> torch.Tensor:
    """HOG pseudo-labels for a batch. (B, C, H, W) float -> (B, hog_dim(cfg)).

    Colour images are made grey by the channel mean first. Computed in float32 (float64
    when the input is float64), never in half precision: autocast would round the
    histograms, and orientations near a bin boundary need the precision.
    """
    cfg = cfg or HOGConfig()
    if images.ndim != 4:
        raise ValueError(f"hog_descriptor expects (B, C, H, W), got shape {tuple(images.shape)}")
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    grey = images.to(dtype).mean(dim=1, keepdim=True)
    if grey.shape[-2:] != (cfg.resize, cfg.resize):
        grey = F.interpolate(
            grey,
            size=(cfg.resize, cfg.resize),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    g_row, g_col = _gradients(grey[:, 0])
    magnitude = torch.hypot(g_row, g_col)
    orientation = _orientation(g_row, g_col, cfg.bins)
    # bin i holds [i, i + 1) * 180 / bins: the nearest bin centre, scikit-image's edges
    bin_index = orientation.div_(180.0 / cfg.bins).floor_().long().clamp_(max=cfg.bins - 1)
    # one weighted bincount over (image, cell, bin): no (B, bins, H, W) one-hot tensor
    n, c = cfg.resize // cfg.cell, cfg.cell
    b = grey.shape[0]
    cell_of_pixel = torch.arange(n * c, device=grey.device) // c
    cell_index = cell_of_pixel[:, None] * n + cell_of_pixel[None, :]  # (n*c, n*c)
    image_offset = torch.arange(b, device=grey.device)[:, None, None] * (n * n)
    index = ((image_offset + cell_index) * cfg.bins + bin_index[:, : n * c, : n * c]).flatten()
    weights = magnitude[:, : n * c, : n * c].flatten()
    hist = torch.bincount(index, weights=weights, minlength=b * n * n * cfg.bins)
    hist = hist.to(grey.dtype).reshape(b, n, n, cfg.bins) / (c * c)  # mean over the cell
    hist = _normalise(hist, cfg.norm)  # (B, n, n, bins), row-major cells as scikit-image
    return hist.reshape(hist.shape[0], -1)
