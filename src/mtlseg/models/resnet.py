"""ResNet-50 encoder (He et al. 2016, v1.5: stride on the 3x3 conv), written out because
torchvision is not a dependency. Module names follow torchvision's, so its ImageNet
``state_dict`` files load directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mtlseg.models.weights import load_local_weights


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride), 1x1 expand x4, plus the identity or a projected shortcut."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """conv1/bn1/relu/maxpool, then ``layers`` Bottleneck stages (ResNet-50: 3, 4, 6, 3).

    ``stages=3`` drops the last (2048-channel) stage as paper 001's Big UNet does.
    ``forward`` returns the stem output (stride 2) and each stage's output.
    """

    def __init__(self, in_channels: int, layers: list[int], width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in, self.channels = width, [width]
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = [Bottleneck(c_in, planes, stride=1 if i == 0 else 2)]
            c_in = planes * Bottleneck.expansion
            stage += [Bottleneck(c_in, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.channels.append(c_in)
        self.num_stages = len(layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """From the stem output to every stage output."""
        outs, x = [], self.maxpool(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs

    def load_weights(self, path: Path | str) -> dict[str, list[str]]:
        """Load a local ImageNet ``state_dict`` (torchvision key names) non-strictly; a full
        ResNet-50's ``layer4.*`` and ``fc.*`` are reported as unexpected."""
        return load_local_weights(self, path, "ResNet encoder")
