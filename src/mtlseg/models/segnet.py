"""SegNet (Badrinarayanan et al. 2017) and MTAN on its encoder (Liu et al. 2019; paper 002).

The encoder is VGG16-BN's ``features`` (13 conv-BN-ReLU in 5 blocks, each closed by a
2x2 max-pool), laid out index for index as torchvision's, so a local VGG16-BN
``state_dict`` loads by name. Pooling keeps its indices; the mirrored decoder puts values
back where they were taken (max-unpool) before its convolutions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mtlseg.models.base import Backbone, FeatureInfo
from mtlseg.models.registry import register_backbone
from mtlseg.models.weights import load_local_weights

VGG16_WIDTHS = [64, 128, 256, 512, 512]
VGG16_CONVS = [2, 2, 3, 3, 3]


@dataclass
class SegNetConfig:
    widths: list[int] = field(default_factory=lambda: list(VGG16_WIDTHS))
    convs: list[int] = field(default_factory=lambda: list(VGG16_CONVS))  # per block
    weights: str | None = None  # local VGG16(-BN) state_dict, torchvision names; no download

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.convs) or not self.widths:
            raise ValueError("widths and convs need one entry per encoder block")
        if min(self.convs) < 1:
            raise ValueError(f"every block needs at least one convolution, got {self.convs}")


def conv_bn_relu(c_in: int, c_out: int, dilation: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation)
    return [conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class KeepSize(nn.Module):
    """Stands where a block's pooling was removed (a dilated encoder): (x, no indices)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x, None


def _adapt_first_conv(key: str, saved: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
    """RGB filters of the first convolution summed over colour for a one-channel input
    (what a grey image replicated to RGB would see); paper 002's colourisation variant."""
    if key == "features.0.weight" and saved.shape[1] == 3 and own.shape[1] == 1:
        return saved.sum(dim=1, keepdim=True)
    return None


class VGGEncoder(nn.Module):
    """VGG-BN ``features`` with index-keeping pools. ``blocks(x)`` returns, per block, the
    output of its first conv (MTAN's attention input), its last conv (pre-pool), the pooled
    map, the pooling indices and the pre-pool size.

    ``output_stride`` (a power of two below 2^blocks): the pools that would take the map
    below it are removed and every later block's convolutions are dilated by the stride
    they lost (DeepLab's dilated VGG, Chen et al. 2017), so the deepest map stays at that
    stride with the same receptive field; weights load as before (same shapes)."""

    def __init__(
        self,
        in_channels: int,
        widths: list[int],
        convs: list[int],
        output_stride: int | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.bounds: list[tuple[int, int, int]] = []  # (start, end of first conv, pool index)
        self.strides: list[int] = []  # of each block's output
        c, stride, dilation = in_channels, 1, 1
        limit = output_stride or 2 ** len(widths)
        for width, n in zip(widths, convs, strict=True):
            start = len(layers)
            for _ in range(n):
                layers += conv_bn_relu(c, width, dilation)
                c = width
            if stride * 2 <= limit:
                layers.append(nn.MaxPool2d(2, 2, return_indices=True, ceil_mode=True))
                stride *= 2
            else:
                layers.append(KeepSize())
                dilation *= 2
            self.bounds.append((start, start + 3, len(layers) - 1))
            self.strides.append(stride)
        self.features = nn.Sequential(*layers)

    def blocks(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for start, first_end, pool in self.bounds:
            first = self.features[start:first_end](x)
            last = self.features[first_end:pool](first)
            pooled, indices = self.features[pool](last)
            out.append({"first": first, "last": last, "pooled": pooled, "indices": indices})
            x = pooled
        return out


class SegNetDecoder(nn.Module):
    """Mirror of the encoder: per block (deepest first) max-unpool with the encoder's
    indices, then its convolutions, the last one narrowing to the next block's width."""

    def __init__(self, widths: list[int], convs: list[int], num_classes: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for j in reversed(range(len(widths))):
            c_out = widths[j - 1] if j > 0 else widths[0]
            layers = []
            for k in range(convs[j]):
                layers += conv_bn_relu(widths[j], c_out if k == convs[j] - 1 else widths[j])
            self.blocks.append(nn.Sequential(*layers))
        self.out = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def forward(
        self, x: torch.Tensor, encoded: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = {}
        for i, (block, enc) in enumerate(zip(self.blocks, reversed(encoded), strict=True)):
            x = F.max_unpool2d(
                x, enc["indices"], (2, 2), (2, 2), output_size=enc["last"].shape[-2:]
            )
            x = block(x)
            features[f"decoder{i + 1}"] = x
        return self.out(x), features


def segnet_feature_info(widths: list[int]) -> dict[str, FeatureInfo]:
    """``encoder1..N`` (pooled block outputs, stride 2..2^N; the last is ``bottleneck``) and
    ``decoder1..N`` (deepest first, the last at full size)."""
    n = len(widths)
    info = {"bottleneck": FeatureInfo(widths[-1], 2**n)}
    for j, w in enumerate(widths):
        info[f"encoder{j + 1}"] = FeatureInfo(w, 2 ** (j + 1))
    for i in range(n):
        j = n - 1 - i
        info[f"decoder{i + 1}"] = FeatureInfo(widths[j - 1] if j > 0 else widths[0], 2**j)
    return info


@register_backbone(
    "segnet", SegNetConfig, tiny={"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1]}
)
class SegNet(Backbone):
    """SegNet: hard parameter sharing, every auxiliary head reads the shared features.

    FiLM acts on the first convolution's output (``encoder.features.2``, its ReLU). Input sizes need not be multiples of 32
    (ceil-mode pooling, unpooling to the recorded sizes).
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: SegNetConfig) -> None:
        super().__init__()
        self.encoder = VGGEncoder(in_channels, cfg.widths, cfg.convs)
        self.decoder = SegNetDecoder(cfg.widths, cfg.convs, num_classes)
        self.film_channels = cfg.widths[0]
        self.film_module = "encoder.features.2"
        self.feature_info = segnet_feature_info(cfg.widths)
        self.weights_report = (
            load_local_weights(self.encoder, cfg.weights, "VGG encoder", _adapt_first_conv)
            if cfg.weights
            else None
        )

    def encode(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.encoder.blocks(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoded = self.encode(x)
        features = {f"encoder{j + 1}": e["pooled"] for j, e in enumerate(encoded)}
        features["bottleneck"] = encoded[-1]["pooled"]
        logits, decoded = self.decoder(encoded[-1]["pooled"], encoded)
        return logits, {**features, **decoded}


class AttentionUnit(nn.Module):
    """Liu et al. 2019's task attention: 1x1 conv-BN-ReLU-1x1 conv-BN-sigmoid -> mask in (0, 1)."""

    def __init__(self, c_in: int, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, c, 1),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 1),
            nn.BatchNorm2d(c),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register_backbone(
    "mtan", SegNetConfig, tiny={"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1]}
)
class MTAN(SegNet):
    """MTAN with attention on the encoder only (paper 002, section 2.2).

    Per task and encoder block j: mask_j = att_j([first conv of block j, previous attended
    output]) (the first block sees the first conv only), attended_j = pool(conv3x3(mask_j *
    block j's output)), the 3x3 conv shared by the tasks as in Liu et al. Each task reads
    its own ``encoder1..N``/``bottleneck``; task ``t``'s features are stored under
    ``t/<name>`` and ``task_features`` hands each head its own.

    The shared SegNet decoder decodes the primary (first) task's attended bottleneck. No
    tensor is unpooled with another tensor's indices: each attended map is max-pooled with
    indices of its own, and the decoder's first unpooling puts the primary's attended
    bottleneck back where its own maxima were (not at the shared map's). The decoder's
    later unpoolings are SegNet's own (its maps at the encoder's pooling indices). This is
    one of the two choices that keep values in place; the MTAN authors' code instead
    upsamples attended maps bilinearly in task-specific decoders, which the paper's
    encoder-only attention does not have.
    """

    per_task = True
    shared_feature = "shared"  # the last encoder block's output, before any task's attention

    def __init__(
        self, in_channels: int, num_classes: int, cfg: SegNetConfig, task_names: list[str]
    ) -> None:
        super().__init__(in_channels, num_classes, cfg)
        if not task_names:
            raise ValueError("mtan needs the task names (one attention branch per task)")
        w = cfg.widths
        self.task_names = list(task_names)
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    AttentionUnit(w[j] if j == 0 else 2 * w[j], w[j]) for j in range(len(w))
                )
                for t in self.task_names
            }
        )
        outs = [*w[1:], w[-1]]
        self.block_att = nn.ModuleList(
            nn.Sequential(*conv_bn_relu(c_in, c_out)) for c_in, c_out in zip(w, outs, strict=True)
        )
        self.feature_info = {
            **segnet_feature_info(w),
            **{f"encoder{j + 1}": FeatureInfo(c, 2 ** (j + 1)) for j, c in enumerate(outs)},
            **{f"attention{j + 1}": FeatureInfo(c, 2**j) for j, c in enumerate(w)},  # the masks
            "bottleneck": FeatureInfo(outs[-1], 2 ** len(w)),
            "shared": FeatureInfo(w[-1], 2 ** (len(w) - 1)),
        }

    def attend(
        self, task: str, encoded: list[dict[str, torch.Tensor]]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(task's features, the pooling indices of its attended bottleneck)."""
        out: dict[str, torch.Tensor] = {}
        prev: torch.Tensor | None = None
        indices = torch.empty(0)
        units = cast(nn.ModuleList, self.attention[task])
        for j, (unit, conv, enc) in enumerate(zip(units, self.block_att, encoded, strict=True)):
            mask = unit(enc["first"] if prev is None else torch.cat([enc["first"], prev], 1))
            prev, indices = F.max_pool2d(
                conv(mask * enc["last"]), 2, 2, ceil_mode=True, return_indices=True
            )
            out[f"attention{j + 1}"] = mask
            out[f"encoder{j + 1}"] = prev
        out["bottleneck"] = out[f"encoder{len(units)}"]
        return out, indices

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        encoded = self.encode(x)
        features = {}
        for i, task in enumerate(self.task_names):
            own, indices = self.attend(task, encoded)
            features.update({f"{task}/{k}": v for k, v in own.items()})
            if i == 0:  # the decoder unpools the primary's bottleneck at its own maxima
                deepest = {**encoded[-1], "indices": indices}
        primary = features[f"{self.task_names[0]}/bottleneck"]
        logits, decoded = self.decoder(primary, [*encoded[:-1], deepest])
        return logits, {**features, **decoded, "shared": encoded[-1]["last"]}

    def task_features(
        self, features: dict[str, torch.Tensor], task: str
    ) -> dict[str, torch.Tensor]:
        prefix = f"{task}/"
        own = {k[len(prefix) :]: v for k, v in features.items() if k.startswith(prefix)}
        shared = {k: v for k, v in features.items() if "/" not in k}
        return {**shared, **own}
