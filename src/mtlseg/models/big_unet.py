"""ResNet-encoder UNets: paper 001's "Big UNet" (ResNet-50 without its 2048-channel stage)
and paper 004's ResNet UNet with spatial pyramid pooling at the bottleneck."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock
from torch import nn

from mtlseg.models.base import Backbone, FeatureInfo
from mtlseg.models.blocks import UpBlock, check_dropout
from mtlseg.models.context import PyramidPooling
from mtlseg.models.registry import register_backbone
from mtlseg.models.resnet import ResNetEncoder

# torchvision's order of a ResNet's children; ``freeze: N`` freezes the first N
ENCODER_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass
class BigUNetConfig:
    layers: list[int] = field(default_factory=lambda: [3, 4, 6])  # ResNet-50 minus layer4
    width: int = 64  # ResNet stem width; 64 is ResNet-50 (tests use a tiny one)
    weights: str | None = None  # local ImageNet state_dict (torchvision names); no download
    freeze: int = 0  # freeze the first N encoder children (4: the stem, as paper 001 tried)
    norm: str = "batch"
    pyramid: list[int] = field(default_factory=list)  # PSP bins at the bottleneck ([]: none)
    # dropout on each encoder level's output (the stem, then every stage), one rate per
    # level: ResNet blocks have no place between two convs as SSL4MIS's UNet levels do
    dropout: list[float] | None = None

    def __post_init__(self) -> None:
        check_dropout(self.dropout, 1 + len(self.layers))


@dataclass
class ResNetUNetConfig(BigUNetConfig):
    layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])  # the whole ResNet-50
    pyramid: list[int] = field(default_factory=lambda: [1, 2, 3, 6])  # PSPNet's bins


@register_backbone("big-unet", BigUNetConfig, tiny={"layers": [1, 1, 1], "width": 4})
class BigUNet(Backbone):
    """ResNet stages give skips at strides 2 (stem), 4, 8 and a 16w-channel bottleneck
    (1024 for ResNet-50) at stride 16; four up-blocks return to full size, the last one
    concatenating the input. One-channel input is replicated to the 3 channels the
    ImageNet encoder expects. FiLM acts on the stem output.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: BigUNetConfig) -> None:
        super().__init__()
        children = len(ENCODER_CHILDREN) - 4 + len(cfg.layers)
        if not 0 <= cfg.freeze <= children:
            raise ValueError(f"freeze must be 0..{children}, got {cfg.freeze}")
        self.replicate = in_channels == 1
        self.encoder = ResNetEncoder(3 if self.replicate else in_channels, cfg.layers, cfg.width)
        self.weights_report = self.encoder.load_weights(cfg.weights) if cfg.weights else None
        self.frozen = [getattr(self.encoder, n) for n in ENCODER_CHILDREN[: cfg.freeze]]
        for module in self.frozen:
            module.requires_grad_(False)
        enc = self.encoder.channels  # [w, 4w, 8w, 16w(, 32w)]
        self.pyramid = PyramidPooling(enc[-1], cfg.pyramid) if cfg.pyramid else None
        dec = [enc[-1] // 2**k for k in range(1, len(enc))] + [cfg.width]
        skips = [*enc[-2::-1], 3 if self.replicate else in_channels]
        ins = [enc[-1], *dec[:-1]]
        self.decoder = nn.ModuleList(
            UpBlock(c_in, c_skip, c_out, cfg.norm)
            for c_in, c_skip, c_out in zip(ins, skips, dec, strict=True)
        )
        self.out = UnetOutBlock(2, dec[-1], num_classes)
        self.rates = cfg.dropout or [0.0] * (1 + len(cfg.layers))
        self.film_channels = enc[0]
        self.film_module = "encoder.relu"  # the stem's output: conv1, bn1, relu
        n = len(enc) - 1
        self.feature_info = {"bottleneck": FeatureInfo(enc[-1], 2 ** (n + 1))}
        for i, c in enumerate(dec):
            self.feature_info[f"decoder{i + 1}"] = FeatureInfo(c, 2 ** (n - i))

    def train(self, mode: bool = True) -> BigUNet:
        """Frozen layers stay in eval mode: their batch-norm statistics do not move either."""
        super().train(mode)
        for module in self.frozen:
            module.eval()
        return self

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's and every stage's output, each after its level's dropout."""
        h = self._drop(self.encoder.stem(x), 0)
        levels = [h]
        h = self.encoder.maxpool(h)
        for i in range(self.encoder.num_stages):
            h = self._drop(getattr(self.encoder, f"layer{i + 1}")(h), i + 1)
            levels.append(h)
        return levels

    def _drop(self, x: torch.Tensor, level: int) -> torch.Tensor:
        p = self.rates[level]
        return F.dropout(x, p, self.training) if p > 0 else x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.replicate:
            x = x.expand(-1, 3, -1, -1)
        skips = [x, *self._encode(x)]
        h = skips.pop()
        if self.pyramid is not None:
            h = self.pyramid(h)
        features = {"bottleneck": h}
        for i, block in enumerate(self.decoder):
            skip = skips.pop()
            h = block(h, skip.shape[-2:], skip)
            features[f"decoder{i + 1}"] = h
        return self.out(h), features


@register_backbone("resnet-unet", ResNetUNetConfig, tiny={"layers": [1, 1, 1, 1], "width": 4})
class ResNetUNet(BigUNet):
    """Paper 004's model: a whole ResNet-50 encoder (bottleneck at stride 32), PSPNet's
    pyramid pooling on the bottleneck, a UNet decoder concatenating the encoder's outputs,
    batch norm and ReLU; ``weights`` loads a local torchvision ImageNet state_dict."""
