"""Models Genesis' image corruptions (Zhou et al., MICCAI 2019 / MedIA 2021, Sec. 2.1), in 2D.

The network learns to restore the original image from a corrupted one: a non-linear
intensity mapping (a random Bezier curve), local pixel shuffling, and in- or out-painting.
Each function takes a batch (B, C, H, W) scaled to [0, 1] per image and a generator, so a
step's corruption is reproducible. The rates are the authors' (``pytorch/utils.py`` and
``config.py`` of MrGiovanni/ModelsGenesis): non-linear 0.9, local shuffle 0.5, painting
0.9 of which out-painting 0.8 and in-painting the rest; their 2D sizes are scaled from the
3D 64-voxel cubes to the image's side (Deviation: the shuffle uses ``blocks`` windows per
image, not their 10 000 per cube, and no flips).
"""

from __future__ import annotations

import math

import torch


def _uniform(g: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=g))


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high)."""
    return int(torch.randint(low, max(high, low + 1), (), generator=g))


def bezier_map(x: torch.Tensor, g: torch.Generator, samples: int = 1000) -> torch.Tensor:
    """A monotonic intensity mapping of [0, 1] onto itself by a cubic Bezier curve from
    (0, 0) to (1, 1) with two random control points, reversed half of the time (the
    authors' ``nonlinear_transformation``)."""
    p1, p2 = (_uniform(g), _uniform(g)), (_uniform(g), _uniform(g))
    t = torch.linspace(0, 1, samples)
    xs = 3 * (1 - t) ** 2 * t * p1[0] + 3 * (1 - t) * t**2 * p2[0] + t**3
    ys = 3 * (1 - t) ** 2 * t * p1[1] + 3 * (1 - t) * t**2 * p2[1] + t**3
    if _uniform(g) < 0.5:
        ys = 1 - ys  # the reversed curve (the authors flip their x values)
    xs, order = torch.sort(xs)
    ys = ys[order]
    index = torch.searchsorted(xs.to(x.device), x.contiguous().clamp(0, 1)).clamp(1, samples - 1)
    x0, x1 = xs.to(x.device)[index - 1], xs.to(x.device)[index]
    y0, y1 = ys.to(x.device)[index - 1], ys.to(x.device)[index]
    w = ((x - x0) / (x1 - x0).clamp(min=1e-12)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def local_shuffle(x: torch.Tensor, g: torch.Generator, blocks: int = 50) -> torch.Tensor:
    """``blocks`` windows of up to a tenth of the side, each with its pixels permuted (the
    authors' ``local_pixel_shuffling``)."""
    out = x.clone()
    c, h, w = x.shape
    for _ in range(blocks):
        bh, bw = _randint(g, 1, h // 10 + 1), _randint(g, 1, w // 10 + 1)
        y0, x0 = _randint(g, 0, h - bh + 1), _randint(g, 0, w - bw + 1)
        window = out[:, y0 : y0 + bh, x0 : x0 + bw].reshape(c, -1)
        perm = torch.randperm(window.shape[1], generator=g).to(x.device)
        out[:, y0 : y0 + bh, x0 : x0 + bw] = window[:, perm].reshape(c, bh, bw)
    return out


def inpaint(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Up to 5 boxes of a sixth to a third of the side replaced by uniform noise, each after
    the first with probability 0.95 (the authors' ``image_in_painting``)."""
    out = x.clone()
    c, h, w = x.shape
    count = 5
    while count > 0 and (count == 5 or _uniform(g) < 0.95):
        bh, bw = _randint(g, h // 6, h // 3), _randint(g, w // 6, w // 3)
        y0, x0 = _randint(g, 3, h - bh - 3), _randint(g, 3, w - bw - 3)
        noise = torch.rand((c, bh, bw), generator=g).to(x.device, x.dtype)
        out[:, y0 : y0 + bh, x0 : x0 + bw] = noise
        count -= 1
    return out


def outpaint(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Uniform noise everywhere but up to 5 boxes of 3/7 to 4/7 of the side, where the image
    shows through (the authors' ``image_out_painting``)."""
    c, h, w = x.shape
    out = torch.rand((c, h, w), generator=g).to(x.device, x.dtype)
    count = 5
    while count > 0 and (count == 5 or _uniform(g) < 0.95):
        bh = _randint(g, h - 4 * h // 7, h - 3 * h // 7)
        bw = _randint(g, w - 4 * w // 7, w - 3 * w // 7)
        y0, x0 = _randint(g, 3, h - bh - 3), _randint(g, 3, w - bw - 3)
        out[:, y0 : y0 + bh, x0 : x0 + bw] = x[:, y0 : y0 + bh, x0 : x0 + bw]
        count -= 1
    return out


def corrupt(
    x: torch.Tensor,
    g: torch.Generator,
    nonlinear: float = 0.9,
    shuffle: float = 0.5,
    paint: float = 0.9,
    outpaint_share: float = 0.8,
    blocks: int = 50,
) -> torch.Tensor:
    """Each image of (B, C, H, W) in [0, 1] through the authors' chain: local shuffle (with
    probability ``shuffle``), the non-linear mapping (``nonlinear``), then with probability
    ``paint`` out-painting (``outpaint_share`` of the time) or in-painting."""
    out = []
    for image in x:
        if _uniform(g) < shuffle:
            image = local_shuffle(image, g, blocks)
        if _uniform(g) < nonlinear:
            image = bezier_map(image, g)
        if _uniform(g) < paint:
            image = outpaint(image, g) if _uniform(g) < outpaint_share else inpaint(image, g)
        out.append(image)
    return torch.stack(out)


def to_unit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> each image min-max scaled to [0, 1], with its minimum and range."""
    flat = x.flatten(1)
    low = flat.min(1).values.view(-1, *[1] * (x.dim() - 1))
    spread = (flat.max(1).values.view_as(low) - low).clamp(min=math.ulp(1.0))
    return (x - low) / spread, low, spread
