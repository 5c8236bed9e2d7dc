"""The primary task: per-pixel classes from the annotation (softmax or multi-label sigmoid)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtlseg.errors import ConfigError
from mtlseg.losses import SEG_LOSSES
from mtlseg.tasks.base import Task, register_task


@dataclass
class SegmentationParams:
    loss: str = "ce"  # registry name in mtlseg.losses.SEG_LOSSES; its mode must match
    mode: str = "softmax"  # softmax: K channels | multilabel: one sigmoid channel per fg class
    threshold: float = 0.5  # multilabel: a class is on where its probability exceeds this


@register_task("segmentation")
class SegmentationTask(Task):
    """Target: the mask (B, H, W), or for ``multilabel`` its one-hot foreground channels
    (B, K-1, H, W). Output: the backbone's logits. ``decode`` turns logits into class
    indices for the metrics: argmax, or for multilabel the most probable class that is on
    (background where none is).
    """

    Config = SegmentationParams
    MODES = ("softmax", "multilabel")

    def __init__(self, cfg, ctx) -> None:
        super().__init__(cfg, ctx)
        p = self.params
        if p.mode not in self.MODES:
            raise ConfigError(
                f"tasks.{self.name}.params.mode: expected softmax or multilabel, got {p.mode!r}"
            )
        factory = SEG_LOSSES.get(p.loss)
        if factory.mode != p.mode:
            raise ConfigError(
                f"tasks.{self.name}.params.loss: {p.loss!r} is a {factory.mode} loss but mode is "
                f"{p.mode!r} (multilabel: bce-dice; softmax: ce, dice-ce)"
            )
        self._loss = factory()

    @classmethod
    def output_channels(cls, params: SegmentationParams, num_classes: int) -> int:
        return max(1, num_classes - 1) if params.mode == "multilabel" else num_classes

    def target(self, batch):
        mask = batch["mask"]
        if self.params.mode == "softmax":
            return mask
        onehot = F.one_hot(mask, self.ctx.num_classes).permute(0, 3, 1, 2)
        return onehot[:, 1:].float()

    def loss(self, output, target):
        return self._loss(output, target)

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) logits -> (B, H, W) class indices."""
        if self.params.mode == "softmax":
            return logits.argmax(1)
        prob = logits.float().sigmoid()
        best, index = prob.max(1)
        return torch.where(best > self.params.threshold, index + 1, torch.zeros_like(index))
