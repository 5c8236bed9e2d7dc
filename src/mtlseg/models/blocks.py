"""Decoder building block shared by the light UNets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetBasicBlock
from torch import nn


class UpBlock(nn.Module):
    """Transposed conv x2, then [concat skip] and two 3x3 conv-norm-LeakyReLU (MONAI block).

    ``c_skip = 0`` gives a decoder without skip connections (paper 001's Small UNet).
    The upsampled map is resized to ``size`` when odd input sizes leave it one pixel off.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int, norm: str) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        self.conv = UnetBasicBlock(
            2, c_out + c_skip, c_out, kernel_size=3, stride=1, norm_name=norm
        )

    def forward(
        self, x: torch.Tensor, size: torch.Size, skip: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))
