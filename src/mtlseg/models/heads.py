"""Auxiliary heads attached to backbone features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mtlseg.models.base import Backbone


class RegressionUnit(nn.Module):
    """Paper 000, Table 1: [Conv 3x3 + ReLU + MaxPool 2] x 2, Flatten, Linear(out_dim).

    (B, C, h, w) -> (B, out_dim). When the pooled map is larger than ``max_grid`` (shallow
    decoder stages of U2Net), it is average-pooled to ``max_grid`` first, so the Linear
    layer stays small; at the bottleneck this never triggers.
    """

    def __init__(
        self, c_in: int, in_size: int, out_dim: int, hidden: int = 32, max_grid: int = 8
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(c_in, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
        )
        size = math.ceil(math.ceil(in_size / 2) / 2)  # two ceil-mode max-pools
        grid = min(size, max_grid)
        self.pool = nn.AdaptiveAvgPool2d(grid) if grid < size else nn.Identity()
        self.linear = nn.Linear(hidden * grid * grid, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(self.convs(x)).flatten(1))


class FeatureHeads(nn.Module):
    """One head per named feature; forward stacks their outputs batch-first:
    {name: feat} -> (B, S, ...)."""

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.stack([head(features[name]) for name, head in self.heads.items()], 1)


def regression_heads(
    backbone: Backbone,
    spec: str | list[str],
    image_size: int,
    out_dim: int,
    hidden: int,
    max_grid: int,
) -> FeatureHeads:
    """A RegressionUnit on each feature named by ``spec`` (``bottleneck``, ``decoder``, ...)."""
    heads: dict[str, nn.Module] = {}
    for name in backbone.resolve_features(spec):
        info = backbone.feature_info[name]
        size = max(1, -(-image_size // info.stride))
        heads[name] = RegressionUnit(info.channels, size, out_dim, hidden, max_grid)
    return FeatureHeads(heads)


class PooledHead(nn.Module):
    """Global average pool of one feature (2D or 3D), then Linear-ReLU-Linear:
    {name: feat} -> (B, out)."""

    def __init__(self, feature: str, c_in: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.feature = feature
        self.mlp = nn.Sequential(
            nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(features[self.feature].flatten(2).mean(-1))


class DeepSupervisionHead(nn.Module):
    """1x1 conv logits on decoder stages below full resolution (nnU-Net's deep supervision,
    Isensee et al. 2021): {name: feat} -> {"deep<i>": (B, K, h_i, w_i)}, i = 1 the finest."""

    def __init__(self, features: dict[str, int], num_classes: int, dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.convs = nn.ModuleDict(
            {name: conv(c, num_classes, kernel_size=1) for name, c in features.items()}
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            f"deep{i + 1}": conv(features[name])
            for i, (name, conv) in enumerate(self.convs.items())
        }


class DenseHead(nn.Module):
    """A light per-task decoder for dense auxiliary targets (edges, clean image, colour):
    from one feature at stride s, log2(s) steps of bilinear x2 + 3x3 conv-BN-ReLU, then a
    1x1 conv. {name: feat} -> (B, out, size, size) (the training input's size).
    ``hidden=0``: the 1x1 conv alone, on the feature as it is (resized bilinearly if it is
    not at full size): DTC's output layer on the last decoder stage."""

    def __init__(
        self, feature: str, c_in: int, stride: int, out_dim: int, hidden: int, size: int
    ) -> None:
        super().__init__()
        self.feature, self.size = feature, (size, size)
        steps = max(0, math.ceil(math.log2(stride))) if stride > 1 and hidden > 0 else 0
        layers: list[nn.Module] = []
        c = c_in
        for _ in range(max(steps, 1) if hidden > 0 else 0):
            layers += [nn.Conv2d(c, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(True)]
            c = hidden
        self.steps = steps
        self.convs = nn.ModuleList(
            nn.Sequential(*layers[i : i + 3]) for i in range(0, len(layers), 3)
        )
        self.out = nn.Conv2d(c, out_dim, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = features[self.feature]
        for i, conv in enumerate(self.convs):
            if i < self.steps:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = conv(x)
        x = self.out(x)
        if x.shape[-2:] != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x
