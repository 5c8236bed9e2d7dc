"""The primary task: per-pixel classes from the annotation."""

from __future__ import annotations

from dataclasses import dataclass

from mtlseg.losses import SEG_LOSSES
from mtlseg.tasks.base import Task, register_task


@dataclass
class SegmentationParams:
    loss: str = "ce"  # registry name in mtlseg.losses.SEG_LOSSES


@register_task("segmentation")
class SegmentationTask(Task):
    """Target: the mask (B, H, W); output: the backbone's logits (B, K, H, W)."""

    Config = SegmentationParams

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        self._loss = SEG_LOSSES.get(self.params.loss)()

    def target(self, batch):
        return batch["mask"]

    def loss(self, output, target):
        return self._loss(output, target)
