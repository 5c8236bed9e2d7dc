"""Self-supervised targets made from the batch's own images on its device (paper 002, 2.4)."""

from __future__ import annotations

import torch
from kornia.color import rgb_to_grayscale, rgb_to_lab
from kornia.filters import canny


def unit_range(x: torch.Tensor) -> torch.Tensor:
    """Per image, one min-max over all channels to [0, 1] (colour ratios kept):
    (B, C, H, W) normalised images -> the same in [0, 1]."""
    flat = x.float().flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    scale = (high - low).clamp_min(1e-8)
    return (x.float() - low[:, None, None, None]) / scale[:, None, None, None]


def grey(x01: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 1, H, W): luma for RGB, the mean for other channel counts."""
    if x01.shape[1] == 3:
        return rgb_to_grayscale(x01)
    return x01.mean(1, keepdim=True)


def canny_edges(x: torch.Tensor, low: float, high: float, sigma: float) -> torch.Tensor:
    """Canny (1986) edges of each image, rescaled to [0, 1] and made grey: (B, 1, H, W) of
    0/1. Thresholds compare with kornia's unnormalised Sobel magnitude (a unit step ~2.6)."""
    with torch.no_grad():
        _, edges = canny(grey(unit_range(x)), low, high, sigma=(sigma, sigma))
    return edges


def lab(x: torch.Tensor) -> torch.Tensor:
    """RGB images (any normalisation) -> CIE LAB scaled to about [-1, 1]: L / 50 - 1, a / 110,
    b / 110. (B, 3, H, W) -> (B, 3, H, W)."""
    with torch.no_grad():
        out = rgb_to_lab(unit_range(x))  # min-max: already within [0, 1] exactly
    return torch.cat([out[:, :1] / 50.0 - 1.0, out[:, 1:] / 110.0], dim=1)
