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


def level_feature_info(channels: list[int]) -> dict[str, FeatureInfo]:
    """Features of a UNet with one stride-2 step per level: ``bottleneck`` at the deepest
    level, then ``decoder1..N`` back up to full size (deepest first)."""
    depth = len(channels) - 1
    info = {"bottleneck": FeatureInfo(channels[-1], 2**depth)}
    for i, c in enumerate(channels[-2::-1]):
        info[f"decoder{i + 1}"] = FeatureInfo(c, 2 ** (depth - 1 - i))
    return info


class Backbone(nn.Module):
    """A segmentation network exposing its features for auxiliary heads.

    ``forward(x)`` maps (B, C_in, H, W) to ``(logits (B, K, H, W), {name: feature})``.
    ``feature_info`` names every feature; ``"bottleneck"`` is the deepest one and
    ``"decoder"`` expands to every decoder stage, deepest first.

    FiLM (paper 001, section 4.3) is applied by the model, not by the backbone: a backbone
    declares the submodule whose output is conditioned (``film_module``, a dotted path; the
    first convolution block) and that output's channels (``film_channels``).
    """

    feature_info: dict[str, FeatureInfo]
    film_channels: int
    film_module: str = "encoder.0"
    spatial_dims: int = 2  # 2: (B, C, H, W) images | 3: (B, C, H, W, D) volumes (data.dims)
    size_multiple: tuple[int, ...] | None = None  # input sizes must divide by these (3D)
    per_task: bool = False  # built with the task names, one feature branch per task (MTAN)
    shared_feature: str = "bottleneck"  # the deepest feature every task's output depends on
    # features that are extra segmentation outputs (logits), not features for heads: the
    # model moves them to its outputs as ``<segmentation>/<name>`` (U2Net's side outputs)
    output_features: tuple[str, ...] = ()

    def task_features(
        self, features: dict[str, torch.Tensor], task: str
    ) -> dict[str, torch.Tensor]:
        """The features task ``task``'s head reads: the shared ones unless overridden."""
        return features

    def check_contract(self) -> None:
        """The declarations the model and the tasks rely on, checked once when it is built."""
        name = type(self).__name__
        if "bottleneck" not in self.feature_info:
            raise ConfigError(f"{name}: feature_info must name a 'bottleneck' feature")
        if self.shared_feature not in self.feature_info:
            raise ConfigError(f"{name}: shared_feature {self.shared_feature!r} is not a feature")
        if not (isinstance(self.film_channels, int) and self.film_channels > 0):
            raise ConfigError(f"{name}: film_channels must be a positive channel count")
        self.conditioned_module()

    def conditioned_module(self) -> nn.Module:
        """The submodule whose output FiLM conditions (``film_module``)."""
        try:
            return self.get_submodule(self.film_module)
        except AttributeError:
            raise ConfigError(
                f"model.film: {type(self).__name__} declares film_module={self.film_module!r}, "
                "which it does not have"
            ) from None

    def describe(self, image_size: int) -> list[str]:
        """Lines worth logging when the network is built for ``image_size`` inputs (e.g.
        which context rates exceed the latent map)."""
        return []

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
