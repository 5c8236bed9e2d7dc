"""3D UNet on MONAI's UNet blocks for volumetric patches (B, C, H, W, D), with the same
feature contract as the 2D backbones (``bottleneck``, ``decoder1..N`` deepest first).

Anisotropic data (few thick slices, as ACDC's cine-MRI or paper 003's BRATS crops) keeps
the first ``anisotropic_levels`` levels in-plane: kernels 3x3x1 and strides 2x2x1, so the
network's receptive field grows in the slice before it grows across slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monai.networks.blocks import UnetBasicBlock, UnetOutBlock, UnetUpBlock
from torch import nn

from mtlseg.models.base import level_feature_info
from mtlseg.models.registry import register_backbone
from mtlseg.models.unet import SkipUNet


@dataclass
class UNet3DConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    norm: str = "batch"  # batch | instance
    anisotropic_levels: int = 2  # levels with 3x3x1 kernels and no downsampling across slices

    def __post_init__(self) -> None:
        if len(self.channels) < 2:
            raise ValueError("unet3d needs at least two levels of channels")
        if not 0 <= self.anisotropic_levels <= len(self.channels):
            raise ValueError(
                f"anisotropic_levels must be in 0..{len(self.channels)}, got "
                f"{self.anisotropic_levels}"
            )

    def kernel(self, level: int) -> tuple[int, int, int]:
        return (3, 3, 1) if level < self.anisotropic_levels else (3, 3, 3)

    def stride(self, level: int) -> tuple[int, int, int]:
        """Downsampling into ``level`` (level 0 keeps the input size)."""
        if level == 0:
            return (1, 1, 1)
        return (2, 2, 1) if level < self.anisotropic_levels else (2, 2, 2)

    @property
    def z_factor(self) -> int:
        """How many times the deepest level is smaller across slices: patch depths divide by it."""
        return 2 ** sum(self.stride(i)[2] == 2 for i in range(len(self.channels)))


@register_backbone("unet3d", UNet3DConfig, tiny={"channels": [4, 8, 16]})
class UNet3D(SkipUNet):
    """Encoder of two conv blocks per level, transposed-conv decoder with skip connections,
    in 3D, with the 2D UNet's forward. FiLM acts on the first level's output."""

    spatial_dims = 3

    def __init__(self, in_channels: int, num_classes: int, cfg: UNet3DConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.cfg = cfg
        self.encoder = nn.ModuleList(
            UnetBasicBlock(
                3, c_in, c_out, kernel_size=cfg.kernel(i), stride=cfg.stride(i), norm_name=cfg.norm
            )
            for i, (c_in, c_out) in enumerate(zip([in_channels, *ch[:-1]], ch, strict=True))
        )
        levels = range(len(ch) - 1, 0, -1)  # the level each up-block comes from
        self.decoder = nn.ModuleList(
            UnetUpBlock(
                3,
                ch[i],
                ch[i - 1],
                kernel_size=cfg.kernel(i - 1),
                stride=1,
                upsample_kernel_size=cfg.stride(i),
                norm_name=cfg.norm,
            )
            for i in levels
        )
        self.out = UnetOutBlock(3, ch[0], num_classes)
        self.film_channels = ch[0]
        self.feature_info = level_feature_info(ch)
        inplane = 2 ** (len(ch) - 1)
        self.size_multiple = (inplane, inplane, cfg.z_factor)
