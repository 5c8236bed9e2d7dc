"""Auxiliary HOG regression (paper 000): regress the image's HOG descriptor with MSE."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtlseg.models.heads import regression_heads
from mtlseg.targets.hog import HOGConfig, hog_descriptor, hog_dim
from mtlseg.tasks.base import Task, register_task


@dataclass
class HOGParams(HOGConfig):
    features: str = "bottleneck"  # or "decoder": one regression unit per decoder stage (U2Net)
    hidden: int = 32  # channels of the regression unit's convolutions
    max_grid: int = 8


@register_task("hog")
class HOGTask(Task[HOGParams]):
    """Target: ``hog_descriptor(image)`` computed on device each step, (B, D).

    Output: (B, S, D), one prediction per attached feature stage. Loss: the mean over
    stages of the MSE (every stage weighted equally), paper 000 eq. 1's L_HOG.
    """

    Config = HOGParams

    def build_head(self) -> nn.Module:
        p = self.params
        return regression_heads(
            self.ctx.backbone, p.features, self.ctx.image_size, hog_dim(p), p.hidden, p.max_grid
        )

    def target(self, batch: dict[str, Any]) -> Any:
        return hog_descriptor(batch["image"], self.params)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        # stage-major, as the mean was summed before outputs were batch-first (same bits)
        stages = output.float().transpose(0, 1).contiguous()
        return F.mse_loss(stages, target.expand_as(stages))
