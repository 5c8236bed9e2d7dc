"""Backbones (by registry name), auxiliary heads and the multi-task model."""

from mtlseg.models import (  # noqa: F401  (registers them)
    aspp,
    big_unet,
    segnet,
    small_unet,
    u2net,
    unet,
    unet3d,
)
from mtlseg.models.multitask import MultiTaskModel
from mtlseg.models.registry import BACKBONES, build_backbone

__all__ = ["BACKBONES", "MultiTaskModel", "build_backbone"]
