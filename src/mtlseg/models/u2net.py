"""U^2-Net (Qin et al., "U^2-Net: Going deeper with nested U-structure", Pattern Recognit. 2020).

Each stage is a Residual U-block (RSU-L): a small UNet of depth L whose output is added to
its input projection; the two deepest stages use RSU-4F (dilations instead of pooling).
Six encoder stages, five decoder stages, a 3x3 side output per stage and a 1x1 fusion.
No library ships it, so it is written here; widths are configurable. The paper's full
model (its Table 1, and ``U2NET`` in the authors' code) is out=[64,128,256,512,512,512],
mid=[32,32,64,128,256,256] with decoder mids De_1..De_5 = [16,32,64,128,256], i.e.
De_1 = RSU-7(128, 16, 64); U^2-Net-p uses out 64 and mid 16 everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtlseg.models.base import Backbone, FeatureInfo
from mtlseg.models.registry import register_backbone

STAGE_DEPTHS = (7, 6, 5, 4, 0, 0)  # 0 = RSU-4F


def _up_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class RSU(nn.Module):
    """RSU-L: input conv, an L-level encoder-decoder with skips, residual sum (paper Fig. 2)."""

    def __init__(self, depth: int, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__()
        self.stem = ConvBNReLU(c_in, c_out)
        self.encoder = nn.ModuleList(
            ConvBNReLU(c_out if i == 0 else c_mid, c_mid) for i in range(depth - 1)
        )
        self.bottom = ConvBNReLU(c_mid, c_mid, dilation=2)
        self.decoder = nn.ModuleList(
            ConvBNReLU(2 * c_mid, c_out if i == depth - 2 else c_mid) for i in range(depth - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.stem(x)
        skips, h = [], x_in
        for i, block in enumerate(self.encoder):
            h = block(F.max_pool2d(h, 2, ceil_mode=True) if i > 0 else h)
            skips.append(h)
        h = self.bottom(h)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            h = block(torch.cat([_up_to(h, skip), skip], dim=1))
        return h + x_in


class RSU4F(nn.Module):
    """RSU-4F: the RSU-4 shape with dilations 1, 2, 4, 8 instead of pooling (full resolution)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__()
        self.stem = ConvBNReLU(c_in, c_out)
        self.encoder = nn.ModuleList(
            [ConvBNReLU(c_out, c_mid, 1), ConvBNReLU(c_mid, c_mid, 2), ConvBNReLU(c_mid, c_mid, 4)]
        )
        self.bottom = ConvBNReLU(c_mid, c_mid, 8)
        self.decoder = nn.ModuleList(
            [
                ConvBNReLU(2 * c_mid, c_mid, 4),
                ConvBNReLU(2 * c_mid, c_mid, 2),
                ConvBNReLU(2 * c_mid, c_out, 1),
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.stem(x)
        skips, h = [], x_in
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        h = self.bottom(h)
        for block, skip in zip(self.decoder, reversed(skips), strict=True):
            h = block(torch.cat([h, skip], dim=1))
        return h + x_in


def _rsu(depth: int, c_in: int, c_mid: int, c_out: int) -> nn.Module:
    return RSU4F(c_in, c_mid, c_out) if depth == 0 else RSU(depth, c_in, c_mid, c_out)


@dataclass
class U2NetConfig:
    """Encoder stages En_1..En_6: ``out_channels``, ``mid_channels``; decoder stages De_1..De_5:
    ``decoder_mid_channels`` (their outputs follow from the encoder's, as the paper's).

    ``decoder_mid_channels`` None: the published models' rule, De_k's mid = En_k's for k >= 2
    and De_1's = min(En_1's, 16) (U^2-Net: 16 where En_1 has 32; U^2-Net-p: 16 = 16).
    ``side_supervision``: U^2-Net's own loss, the fused output and all six side outputs
    (each upsampled to the input) supervised with weight 1 each (Qin et al. eq. 1); they are
    the output entries ``<segmentation>/side1..6`` and mtlseg's generic deep supervision is
    off. The segmentation loss is then a sum of 7 terms, so against an auxiliary loss (HOG)
    of weight 1 the segmentation weighs about 7x what it weighs without it.
    """

    out_channels: list[int] = field(default_factory=lambda: [64, 64, 64, 64, 64, 64])
    mid_channels: list[int] = field(default_factory=lambda: [16, 16, 16, 16, 16, 16])
    decoder_mid_channels: list[int] | None = None
    side_supervision: bool = False

    def decoder_mids(self) -> list[int]:
        """Mid widths of De_1..De_5."""
        if self.decoder_mid_channels is not None:
            return list(self.decoder_mid_channels)
        mid = self.mid_channels
        return [min(mid[0], 16), *mid[1:5]]

    def __post_init__(self) -> None:
        if len(self.out_channels) != 6 or len(self.mid_channels) != 6:
            raise ValueError("u2net needs six out_channels and six mid_channels")
        if self.decoder_mid_channels is not None and len(self.decoder_mid_channels) != 5:
            raise ValueError("u2net decoder_mid_channels: five widths, De_1..De_5")


@register_backbone("u2net", U2NetConfig, tiny={"out_channels": [4] * 6, "mid_channels": [2] * 6})
class U2Net(Backbone):
    """Six RSU encoder stages, five RSU decoder stages, fused side outputs.

    Features: ``bottleneck`` (stage 6) and ``decoder1..5``, deepest first, where a
    regression unit can be attached to every decoder stage as paper 000 does. The logits are
    the fused output; with ``side_supervision`` the six side outputs are extra outputs.
    """

    def __init__(self, in_channels: int, num_classes: int, cfg: U2NetConfig) -> None:
        super().__init__()
        out, mid = cfg.out_channels, cfg.mid_channels
        self.encoder = nn.ModuleList(
            _rsu(d, c_in, m, o)
            for d, c_in, m, o in zip(STAGE_DEPTHS, [in_channels, *out[:5]], mid, out, strict=True)
        )
        # decoder stage k (k = 5..1) takes [upsampled deeper output, encoder stage k] and
        # outputs encoder stage k-1's width (stage 1 keeps its own), as the paper's model
        dec_in = [2 * out[k] for k in range(4)] + [out[4] + out[5]]
        dec_out = [out[0]] + [out[k - 1] for k in range(1, 5)]
        dec_mid = cfg.decoder_mids()
        self.decoder = nn.ModuleList(
            _rsu(STAGE_DEPTHS[k], dec_in[k], dec_mid[k], dec_out[k]) for k in range(5)
        )
        self.side = nn.ModuleList(
            nn.Conv2d(c, num_classes, 3, padding=1) for c in [*dec_out, out[5]]
        )
        self.fuse = nn.Conv2d(6 * num_classes, num_classes, 1)
        self.film_channels = out[0]
        # side k: De_k's logits (k = 1..5), En_6's (k = 6), as the authors' d1..d6
        self.output_features = (
            tuple(f"side{k}" for k in range(1, 7)) if cfg.side_supervision else ()
        )
        self.feature_info = {"bottleneck": FeatureInfo(out[5], 32)}
        for k in range(4, -1, -1):
            self.feature_info[f"decoder{5 - k}"] = FeatureInfo(dec_out[k], 2**k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        skips, h = [], x
        for k, stage in enumerate(self.encoder):
            h = stage(F.max_pool2d(h, 2, ceil_mode=True) if k > 0 else h)
            skips.append(h)
        features = {"bottleneck": h}
        decoded: list[torch.Tensor] = [h]  # stage 6 output, then decoder 5..1
        for k in range(4, -1, -1):
            h = self.decoder[k](torch.cat([_up_to(h, skips[k]), skips[k]], dim=1))
            features[f"decoder{5 - k}"] = h
            decoded.append(h)
        sides = [self.side[5](decoded[0])] + [
            self.side[k](decoded[5 - k]) for k in range(4, -1, -1)
        ]  # En_6, De_5, ..., De_1
        full = [_up_to(s, x) for s in sides]
        fused = self.fuse(torch.cat(full, dim=1))
        if self.output_features:
            features.update({f"side{k}": s for k, s in zip(range(6, 0, -1), full, strict=True)})
        return fused, features
