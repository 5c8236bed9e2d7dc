"""Paper 001's "Small UNet": two 3x3 convolutions per level, a light encoder-decoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from monai.networks.blocks import UnetOutBlock
from torch import nn

from mtlseg.models.base import Backbone, level_feature_info
from mtlseg.models.blocks import DropoutBasicBlock, UpBlock, check_dropout
from mtlseg.models.registry import register_backbone


@dataclass
class SmallUNetConfig:
    # first level 48 wide: the width paper 001's FiLM vectors (48x1) modulate
    channels: list[int] = field(default_factory=lambda: [48, 96, 192, 384])
    skip_connections: bool = False  # the paper's Small UNet has none
    norm: str = "batch"
    dropout: list[float] | None = None  # one rate per encoder level, between its two convs

    def __post_init__(self) -> None:
        check_dropout(self.dropout, len(self.channels))


@register_backbone("small-unet", SmallUNetConfig, tiny={"channels": [4, 8, 16]})
class SmallUNet(Backbone):
    """Per level: [max-pool 2] + two conv-norm-LeakyReLU; decoder: transposed conv + two
    convs, with or without skip connections. FiLM acts on the first level's output.
    Features: ``bottleneck`` and ``decoder1..N`` (deepest first).
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: SmallUNetConfig) -> None:
        super().__init__()
        ch = cfg.channels
        if len(ch) < 2:
            raise ValueError("small-unet needs at least two levels of channels")
        rates = cfg.dropout or [0.0] * len(ch)
        self.encoder = nn.ModuleList(
            DropoutBasicBlock(
                2, c_in, c_out, kernel_size=3, stride=1, norm_name=cfg.norm, dropout=p
            )
            for c_in, c_out, p in zip([in_channels, *ch[:-1]], ch, rates, strict=True)
        )
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.skip = cfg.skip_connections
        self.decoder = nn.ModuleList(
            UpBlock(c_in, c_out if self.skip else 0, c_out, cfg.norm)
            for c_in, c_out in zip(ch[:0:-1], ch[-2::-1], strict=True)
        )
        self.out = UnetOutBlock(2, ch[0], num_classes)
        self.film_channels = ch[0]
        self.feature_info = level_feature_info(ch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(self.pool(x) if i > 0 else x)
            skips.append(x)
        features = {"bottleneck": x}
        for i, (block, skip) in enumerate(zip(self.decoder, skips[-2::-1], strict=True)):
            x = block(x, skip.shape[-2:], skip if self.skip else None)
            features[f"decoder{i + 1}"] = x
        return self.out(x), features
