"""Paper 003's Base network: an encoder, the context ensemble on its deepest map (the latent
space the tasks share) and an ASPP decoder. ``vgg-aspp`` uses a VGG16-BN encoder (local
torchvision weights, as SegNet), ``unet-aspp`` the UNet encoder, both with the same decoder.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from mtlseg.models.base import Backbone, FeatureInfo
from mtlseg.models.context import ASPPDecoder, ContextEnsemble
from mtlseg.models.registry import register_backbone
from mtlseg.models.segnet import SegNetConfig, VGGEncoder, _adapt_first_conv
from mtlseg.models.unet import SkipUNet, unet_encoder
from mtlseg.models.weights import load_local_weights

log = logging.getLogger(__name__)


@dataclass
class ContextParams:
    """The context ensemble and the ASPP decoder (paper 003 Table 1: "CE" and "ASPP")."""

    context: bool = True  # false: no context ensemble (Table 1's VGG16+ASPP without CE)
    context_rates: list[int] = field(default_factory=lambda: [63, 31, 15, 3, 1])
    context_merge: str = "sum"  # sum | concat
    aspp_rates: list[int] = field(default_factory=lambda: [6, 12, 18])
    decoder_channels: int = 64
    low_level: int = 2  # the decoder fuses the encoder feature at stride 2^low_level


@dataclass
class VGGASPPConfig(ContextParams, SegNetConfig):
    # stride of the latent map the context ensemble and ASPP act on (32: VGG's own; 8 or 4:
    # a dilated encoder, where paper 003's large rates reach image content at CPU sizes)
    output_stride: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        top = 2 ** len(self.widths)
        if self.output_stride not in [2**i for i in range(2, len(self.widths) + 1)]:
            raise ValueError(
                f"output_stride: expected a power of two from 4 to {top}, got {self.output_stride}"
            )


@dataclass
class UNetASPPConfig(ContextParams):
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    norm: str = "batch"


class ContextASPPNet(Backbone):
    """Encoder -> context ensemble (``bottleneck``: the shared latent space) -> ASPP decoder.

    Subclasses build ``self.encoder`` and implement ``encode(x) -> [features]``, one
    per stride 2^i (i = 1.. for VGG, 0.. for UNet), named in ``encoder_names``.
    """

    def _build_decoder(
        self, num_classes: int, cfg: ContextParams, strides: list[int], widths: list[int]
    ) -> None:
        low_stride = 2**cfg.low_level
        if low_stride not in strides[:-1]:
            raise ValueError(
                f"low_level={cfg.low_level}: the encoder has features at strides {strides[:-1]} "
                "below its deepest one"
            )
        self.low_index = strides.index(low_stride)
        c_latent = widths[-1]
        self.context = (
            ContextEnsemble(c_latent, cfg.context_rates, cfg.context_merge)
            if cfg.context
            else nn.Identity()
        )
        self.decoder = ASPPDecoder(
            c_latent, widths[self.low_index], num_classes, cfg.decoder_channels, cfg.aspp_rates
        )
        c = cfg.decoder_channels
        self.feature_info = {
            **{
                f"encoder{i + 1}": FeatureInfo(w, s)
                for i, (w, s) in enumerate(zip(widths, strides, strict=True))
            },
            "bottleneck": FeatureInfo(c_latent, strides[-1]),
            "decoder1": FeatureInfo(c, strides[-1]),
            "decoder2": FeatureInfo(c, low_stride),
        }

    def describe(self, image_size: int) -> list[str]:
        """Which context rates reach only padding on the latent map at ``image_size`` (a
        dilated 3x3 conv with rate >= the map's size has every off-centre tap outside it)."""
        if not isinstance(self.context, ContextEnsemble):
            return []
        stride = self.feature_info["bottleneck"].stride
        size = math.ceil(image_size / stride)
        beyond = [r for r in self.context.rates if r >= size]
        if not beyond:
            return [
                f"context ensemble: every rate {self.context.rates} acts on the {size}x{size} latent"
            ]
        return [
            f"context ensemble on the stride-{stride} latent ({size}x{size} at {image_size} px): "
            f"rates {beyond} of {self.context.rates} reach only padding (they act as 1x1 "
            "convolutions); a smaller model.params.output_stride or larger input lets them act"
        ]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        encoded = self.encode(x)
        latent = self.context(encoded[-1])
        logits, decoded = self.decoder(latent, encoded[self.low_index], x.shape[2:])
        features = {f"encoder{i + 1}": e for i, e in enumerate(encoded)}
        return logits, {**features, "bottleneck": latent, **decoded}


@register_backbone(
    "vgg-aspp",
    VGGASPPConfig,
    tiny={"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1], "decoder_channels": 8},
)
class VGGASPP(ContextASPPNet):
    """VGG16-BN encoder (paper 003 section III-D; ``weights``: a local torchvision VGG16-BN
    state_dict, first conv summed over RGB for one-channel input), context ensemble, ASPP.
    Features ``encoder1..5`` are the blocks' outputs (stride 2..32, or up to
    ``output_stride`` with a dilated encoder: the "dilated FCN" of PSPNet that paper 003
    adopts)."""

    def __init__(self, in_channels: int, num_classes: int, cfg: VGGASPPConfig) -> None:
        super().__init__()
        self.encoder = VGGEncoder(in_channels, cfg.widths, cfg.convs, cfg.output_stride)
        self.film_channels = cfg.widths[0]
        self.film_module = "encoder.features.2"  # the first conv-BN-ReLU, as SegNet's
        self._build_decoder(num_classes, cfg, self.encoder.strides, cfg.widths)
        self.weights_report = (
            load_local_weights(self.encoder, cfg.weights, "VGG encoder", _adapt_first_conv)
            if cfg.weights
            else None
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [b["pooled"] for b in self.encoder.blocks(x)]


@register_backbone(
    "unet-aspp", UNetASPPConfig, tiny={"channels": [4, 8, 16, 16], "decoder_channels": 8}
)
class UNetASPP(ContextASPPNet):
    """The UNet encoder (``unet``'s levels, stride 1..2^(N-1)) with the context ensemble
    and ASPP decoder in place of the skip-connected decoder."""

    def __init__(self, in_channels: int, num_classes: int, cfg: UNetASPPConfig) -> None:
        super().__init__()
        if len(cfg.channels) < 3:
            raise ValueError("unet-aspp needs at least three levels of channels")
        self.encoder = unet_encoder(in_channels, cfg.channels, cfg.norm)
        self.film_channels = cfg.channels[0]
        strides = [2**i for i in range(len(cfg.channels))]
        self._build_decoder(num_classes, cfg, strides, cfg.channels)

    encode = SkipUNet.encode
