"""Context modules of paper 003 for any backbone's deepest features, in 2D or 3D.

``ContextEnsemble``: cascaded dilated 3x3 convolutions whose stage outputs are merged
(paper 003 section III-B, after D-LinkNet's centre block); ``ASPP``: DeepLab's atrous
spatial pyramid pooling (Chen et al. 2017, section 3.3: parallel 1x1 and dilated 3x3
branches plus image pooling). Both keep the spatial size of their input.

3D tensors are (B, C, H, W, D) as in MONAI; with ``anisotropic`` the kernels are 3x3x1 and
dilation acts in-plane only, for volumes with few thick slices (paper 003, BRATS setting).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def dilated_conv(
    dims: int, c_in: int, c_out: int, dilation: int, anisotropic: bool = False
) -> nn.Sequential:
    """3x3(x3) conv with ``dilation`` (in-plane only, kernel 3x3x1, when ``anisotropic``),
    padded to keep the size, then batch norm and ReLU."""
    conv: nn.Module
    if dims == 3 and anisotropic:
        d = dilation
        conv = nn.Conv3d(c_in, c_out, (3, 3, 1), padding=(d, d, 0), dilation=(d, d, 1), bias=False)
    else:
        conv = CONV[dims](c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False)
    return nn.Sequential(conv, NORM[dims](c_out), nn.ReLU(inplace=True))


def pointwise(dims: int, c_in: int, c_out: int, norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [CONV[dims](c_in, c_out, 1, bias=not norm)]
    if norm:
        layers.append(NORM[dims](c_out))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class ContextEnsemble(nn.Module):
    """Paper 003's task-task context ensemble: stage i applies a dilated 3x3 conv (rate
    ``rates[i]``) to stage i-1's output, so its receptive field is 1 + 2 * sum(rates[:i+1]);
    the input and every stage's output are summed (``merge="sum"``, D-LinkNet) or
    concatenated and projected back by a 1x1 conv (``merge="concat"``).

    The paper lists the rates 63, 31, 15, 3, 1 (the default); on a small bottleneck the large
    ones see mostly padding, which is harmless (their off-centre taps multiply zeros).
    """

    MERGES = ("sum", "concat")

    def __init__(
        self,
        channels: int,
        rates: list[int] | tuple[int, ...] = (63, 31, 15, 3, 1),
        merge: str = "sum",
        dims: int = 2,
        anisotropic: bool = False,
    ) -> None:
        super().__init__()
        if merge not in self.MERGES:
            raise ValueError(f"context merge must be one of {self.MERGES}, got {merge!r}")
        if not rates or min(rates) < 1:
            raise ValueError(f"context rates must be positive integers, got {list(rates)}")
        self.rates, self.merge = list(rates), merge
        self.stages = nn.ModuleList(
            dilated_conv(dims, channels, channels, r, anisotropic) for r in self.rates
        )
        self.project = (
            pointwise(dims, channels * (len(self.rates) + 1), channels)
            if merge == "concat"
            else None
        )

    @property
    def receptive_field(self) -> int:
        """In-plane receptive field of the merged output, in input pixels."""
        return 1 + 2 * sum(self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [x]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        if self.project is None:
            return torch.stack(outs).sum(0)
        return self.project(torch.cat(outs, 1))


class ASPP(nn.Module):
    """DeepLabv3's ASPP: a 1x1 branch, one dilated 3x3 branch per rate and an image-pooling
    branch (global average, 1x1 conv, broadcast back), concatenated and projected by a 1x1
    conv to ``c_out``. The pooling branch has no batch norm, so a batch of one trains."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        rates: list[int] | tuple[int, ...] = (6, 12, 18),
        dims: int = 2,
        anisotropic: bool = False,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.branches = nn.ModuleList(
            [
                pointwise(dims, c_in, c_out),
                *(dilated_conv(dims, c_in, c_out, r, anisotropic) for r in rates),
            ]
        )
        self.pool = pointwise(dims, c_in, c_out, norm=False)
        self.project = pointwise(dims, c_out * (len(rates) + 2), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(range(2, x.dim()))
        pooled = self.pool(x.mean(dim=spatial, keepdim=True)).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], 1))


class ASPPDecoder(nn.Module):
    """DeepLabv3+'s decoder around ASPP: ASPP on the latent map, upsampled to a low-level
    encoder feature (reduced by a 1x1 conv) and fused by two 3x3 convs, then 1x1 logits,
    upsampled to the input size. Returns (logits, {decoder1: ASPP out, decoder2: fused})."""

    def __init__(
        self,
        c_latent: int,
        c_low: int,
        num_classes: int,
        channels: int = 64,
        rates: list[int] | tuple[int, ...] = (6, 12, 18),
        dims: int = 2,
        anisotropic: bool = False,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(c_latent, channels, rates, dims, anisotropic)
        reduced = max(channels // 4, 8)
        self.reduce = pointwise(dims, c_low, reduced)
        self.fuse = nn.Sequential(
            dilated_conv(dims, channels + reduced, channels, 1, anisotropic),
            dilated_conv(dims, channels, channels, 1, anisotropic),
        )
        self.out = CONV[dims](channels, num_classes, 1)
        self.mode = "bilinear" if dims == 2 else "trilinear"

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(x.shape[2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)

    def forward(
        self, latent: torch.Tensor, low: torch.Tensor, out_size: Sequence[int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        context = self.aspp(latent)
        fused = self.fuse(torch.cat([self._resize(context, low.shape[2:]), self.reduce(low)], 1))
        logits = self._resize(self.out(fused), out_size)
        return logits, {"decoder1": context, "decoder2": fused}


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module (Zhao et al. 2017, Fig. 3): average-pool to b x b bins
    for each b in ``bins``, 1x1 conv to c_in / len(bins) channels, upsample bilinearly, and
    concatenate with the input; a 1x1 conv projects back to ``c_in`` so it drops in at a
    bottleneck. The bins' convs have no batch norm (a 1x1 bin of a batch of one trains)."""

    def __init__(self, c_in: int, bins: list[int] | tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        c_bin = max(1, c_in // len(self.bins))
        self.branches = nn.ModuleList(pointwise(2, c_in, c_bin, norm=False) for _ in self.bins)
        self.project = pointwise(2, c_in + c_bin * len(self.bins), c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(
                branch(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False
            )
            for b, branch in zip(self.bins, self.branches, strict=True)
        ]
        return self.project(torch.cat([x, *pooled], 1))
