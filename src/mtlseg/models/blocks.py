"""Building blocks shared by the light UNets: the encoder level with dropout, the decoder block."""

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


def check_dropout(rates: list[float] | None, levels: int) -> None:
    """``model.params.dropout``: one rate in [0, 1) per encoder level, or None."""
    if rates is None:
        return
    if len(rates) != levels:
        raise ValueError(f"dropout: one rate per encoder level ({levels}), got {len(rates)}")
    bad = [r for r in rates if not 0.0 <= r < 1.0]
    if bad:
        raise ValueError(f"dropout: every rate must be in [0, 1), got {bad[0]}")


class DropoutBasicBlock(UnetBasicBlock):
    """MONAI's UnetBasicBlock (conv-norm-LeakyReLU twice) with dropout between its two convs,
    where SSL4MIS's UNet puts it (``networks/unet.py``, ``ConvBlock``: conv, BN, LeakyReLU,
    Dropout(p), conv, BN, LeakyReLU). ``dropout`` 0: the plain block, the same parameters."""

    def __init__(self, *args, dropout: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.p = dropout

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = self.lrelu(self.norm1(self.conv1(inp)))
        if self.p > 0:
            out = F.dropout(out, self.p, self.training)
        return self.lrelu(self.norm2(self.conv2(out)))
