"""The backbone contract: segmentation logits plus named intermediate features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlseg.errors import ConfigError


@dataclass(frozen=True)
class FeatureInfo:
    channels: int
    stride: int  # input size / feature size


class Backbone(nn.Module):
    """A segmentation network exposing its features for auxiliary heads.

    ``forward(x)`` maps (B, C_in, H, W) to ``(logits (B, K, H, W), {name: feature})``.
    ``feature_info`` names every feature; ``"bottleneck"`` is the deepest one and
    ``"decoder"`` expands to every decoder stage, deepest first.
    """

    feature_info: dict[str, FeatureInfo]

    def resolve_features(self, spec: str | list[str]) -> list[str]:
        names = [spec] if isinstance(spec, str) else list(spec)
        if names == ["decoder"]:
            return [n for n in self.feature_info if n.startswith("decoder")]
        unknown = [n for n in names if n not in self.feature_info]
        if unknown:
            raise ConfigError(
                f"unknown feature {unknown[0]!r}; this backbone has: "
                f"{', '.join(['decoder', *self.feature_info])}"
            )
        return names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
