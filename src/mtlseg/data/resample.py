"""Images and their label maps resized on one pixel grid.

Images are resized with antialiased linear interpolation on pixel centres
(``align_corners=False``). A label map must land on the same grid, or every target is shifted
against its image: torch's ``nearest`` picks source pixel ``floor(i * scale)``, not the one
under the output pixel's centre, which moves a label by (scale - 1) / 2 source pixels towards
the origin (1.5 px at 4x) and capped a perfect prediction on ACDC at 0.836 per-volume Dice at
64 px (0.944 with centred nearest, 0.948 with the rule below; ``benchmarks/resolution_cap.py``).

``data.label_resize`` names the rule (``LABEL_RESIZE``):

- ``linear`` (the default): each class's indicator is resized as the image is (antialiased
  linear), and every pixel takes the class of largest weight. This is how nnU-Net resamples
  segmentations (``resize_segmentation``: one-hot, linear, per-class threshold; here argmax,
  which gives every pixel a class when there are more than two) and the highest cap of the
  hard rules.
- ``nearest-exact``: centred nearest neighbour (PIL's and scikit-image's nearest).
- ``nearest``: torch's floor nearest, the rule of runs made before this module; a checkpoint
  or run folder whose configuration does not name a rule used it (``LEGACY_LABEL_RESIZE``).

Soft targets (the resized indicators themselves) cap higher still (0.993 at 96 px on ACDC),
but every mask-derived task (presence, boxes, distance maps, sync) and the augmentation read
hard labels, so mtlseg keeps hard ones.

Dense arrays (NYUv2's depth and normals) are never blended, as a missing reading (0) must not
leak into its neighbours: they are resized by the rule's ``dense_mode``, centred nearest for
every rule but the legacy one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mtlseg.registry import Registry

LEGACY_LABEL_RESIZE = "nearest"  # what runs recorded before data.label_resize existed used


def resize_linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, C, *spatial) float, 2D or 3D -> ``size``: antialiased linear on pixel centres.

    torch antialiases bilinear only, so a volume is resized as two separable passes: the
    last two axes, then the first (the other axes at scale 1, where the filter is the
    identity)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if x.dim() == 4 and x.shape[-1] == 1 < x.shape[-2]:
        # torch (2.13) returns the first value along H for every output row when W is 1
        return resize_linear(x.transpose(-1, -2), size[::-1]).transpose(-1, -2)
    if x.dim() == 4:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if x.dim() != 5:
        raise ValueError(f"expected a (N, C, H, W) or (N, C, D, H, W) tensor, got {tuple(x.shape)}")
    n, c, d, h, w = x.shape
    planes = x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w)
    planes = resize_linear(planes, size[1:]).reshape(n, d, c, *size[1:]).permute(0, 2, 1, 3, 4)
    columns = planes.reshape(n * c, 1, d, size[1] * size[2])
    out = resize_linear(columns, (size[0], size[1] * size[2]))
    return out.reshape(n, c, *size)


def _linear_indices(labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Each class present resized as its indicator, the class of largest weight per pixel
    (the lowest class among ties)."""
    values = torch.bincount(labels.flatten().long()).nonzero().flatten()
    if len(values) == 1:
        return values.to(labels.dtype).expand(labels.shape[0], *size).clone()
    shape = (1, -1) + (1,) * (labels.dim() - 1)
    weights = resize_linear((labels[:, None] == values.view(shape)).float(), size)
    best = weights[:, 0]
    index = torch.zeros(best.shape, dtype=torch.long, device=best.device)
    for k in range(1, len(values)):  # torch's argmax over a short inner dim is ~10x slower
        higher = weights[:, k] > best
        best = torch.where(higher, weights[:, k], best)
        index.masked_fill_(higher, k)
    return values[index].to(labels.dtype)


def _linear_binary(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Each binary channel resized as an indicator: on where its weight exceeds 0.5."""
    return (resize_linear(maps.float(), size) > 0.5).to(maps.dtype)


def _by_mode(mode: str) -> Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]:
    def indices(labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        out = F.interpolate(labels[:, None].float(), size=size, mode=mode)
        return out[:, 0].to(labels.dtype)

    return indices


def _binary_by_mode(mode: str) -> Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]:
    def binary(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        return F.interpolate(maps.float(), size=size, mode=mode).to(maps.dtype)

    return binary


@dataclass(frozen=True)
class LabelResize:
    """A label-resizing rule: class-index maps (N, *spatial), binary channel maps
    (N, K, *spatial) and the interpolation mode of dense arrays."""

    indices: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]
    binary: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]
    dense_mode: str


LABEL_RESIZE: Registry[LabelResize] = Registry("label resize rule")
LABEL_RESIZE.register("linear")(LabelResize(_linear_indices, _linear_binary, "nearest-exact"))
LABEL_RESIZE.register("nearest-exact")(
    LabelResize(_by_mode("nearest-exact"), _binary_by_mode("nearest-exact"), "nearest-exact")
)
LABEL_RESIZE.register("nearest")(
    LabelResize(_by_mode("nearest"), _binary_by_mode("nearest"), "nearest")
)


def resize_labels(labels: torch.Tensor, size: Sequence[int], rule: str) -> torch.Tensor:
    """Class indices (N, *spatial) -> (N, *size) by the rule ``rule``, same dtype."""
    size = tuple(int(s) for s in size)
    if tuple(labels.shape[1:]) == size:
        return labels
    return LABEL_RESIZE.get(rule).indices(labels, size)


def resize_binary(maps: torch.Tensor, size: Sequence[int], rule: str) -> torch.Tensor:
    """Binary channel maps (N, K, *spatial) -> (N, K, *size) by the rule ``rule``."""
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[2:]) == size:
        return maps
    return LABEL_RESIZE.get(rule).binary(maps, size)


def resize_dense(array: torch.Tensor, size: Sequence[int], rule: str) -> torch.Tensor:
    """A dense target (N, C, *spatial) -> ``size``, never blending neighbouring readings."""
    return F.interpolate(array, size=tuple(size), mode=LABEL_RESIZE.get(rule).dense_mode)


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """(Z, H, W, C) image -> (Z, C, S, S) float, antialiased bilinear."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(0, 3, 1, 2).float()
    return resize_linear(x, (size, size))


def resize_slices(
    image: np.ndarray, label: np.ndarray, size: int, rule: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Z, H, W, C) image, (Z, H, W) label -> (Z, C, S, S) float, (Z, S, S) uint8, the label
    resized on the image's grid by the rule ``rule``."""
    y = resize_labels(torch.from_numpy(label.astype(np.int64)), (size, size), rule)
    return resize_image(image, size), y.to(torch.uint8)
