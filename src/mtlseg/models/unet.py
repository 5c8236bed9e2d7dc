"""UNet (Ronneberger et al., 2015) built from MONAI's UNet blocks, exposing its features."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai.networks.blocks import UnetOutBlock, UnetUpBlock
from torch import nn

from mtlseg.models.base import Backbone, level_feature_info
from mtlseg.models.blocks import DropoutBasicBlock, check_dropout
from mtlseg.models.registry import register_backbone


@dataclass
class UNetConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    norm: str = "batch"  # batch (default: faster on CPU, converges sooner) | instance (nnU-Net)
    # dropout between the two convs of each encoder level, one rate per level (SSL4MIS's
    # UNet: [0.05, 0.1, 0.2, 0.3, 0.5]); None: none
    dropout: list[float] | None = None

    def __post_init__(self) -> None:
        check_dropout(self.dropout, len(self.channels))


def unet_encoder(
    in_channels: int, channels: list[int], norm: str, dropout: list[float] | None = None
) -> nn.ModuleList:
    """Levels of two 3x3 conv blocks (MONAI's UnetBasicBlock, with ``dropout[i]`` between
    them), stride 2 from the second on: level i's output has stride 2^i."""
    rates = dropout or [0.0] * len(channels)
    return nn.ModuleList(
        DropoutBasicBlock(
            2, c_in, c_out, kernel_size=3, stride=1 if i == 0 else 2, norm_name=norm, dropout=p
        )
        for i, (c_in, c_out, p) in enumerate(
            zip([in_channels, *channels[:-1]], channels, rates, strict=True)
        )
    )


class SkipUNet(Backbone):
    """The UNet forward pass shared by the 2D and 3D UNets: ``encoder`` levels (FiLM
    conditions the first, ``encoder.0``), then ``decoder`` up-blocks with skip connections and the ``out`` block."""

    encoder: nn.ModuleList
    decoder: nn.ModuleList
    out: nn.Module

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every level's output (also ``unet-aspp``'s encoder)."""
        levels = []
        for block in self.encoder:
            x = block(x)
            levels.append(x)
        return levels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        skips = self.encode(x)
        x = skips[-1]
        features = {"bottleneck": x}
        for i, (block, skip) in enumerate(zip(self.decoder, skips[-2::-1], strict=True)):
            x = block(x, skip)
            features[f"decoder{i + 1}"] = x
        return self.out(x), features


@register_backbone("unet", UNetConfig, tiny={"channels": [4, 8, 16]})
class UNet(SkipUNet):
    """Encoder of two 3x3 conv blocks per level with stride-2 downsampling, transposed-conv
    decoder with skip connections. Features: ``bottleneck`` and ``decoder1..N`` (deepest first).
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: UNetConfig) -> None:
        super().__init__()
        ch = cfg.channels
        if len(ch) < 2:
            raise ValueError("unet needs at least two levels of channels")
        self.encoder = unet_encoder(in_channels, ch, cfg.norm, cfg.dropout)
        self.decoder = nn.ModuleList(
            UnetUpBlock(
                2, c_in, c_out, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=cfg.norm
            )
            for c_in, c_out in zip(ch[:0:-1], ch[-2::-1], strict=True)
        )
        self.out = UnetOutBlock(2, ch[0], num_classes)
        self.film_channels = ch[0]
        self.feature_info = level_feature_info(ch)
