"""A backbone plus named auxiliary heads; forward returns ``{task_name: output}``."""

from __future__ import annotations

import torch
from torch import nn

from mtlseg.models.base import Backbone


class MultiTaskModel(nn.Module):
    """Segmentation logits under ``seg_name`` and one entry per auxiliary head."""

    def __init__(
        self, backbone: Backbone, heads: dict[str, nn.Module], seg_name: str = "segmentation"
    ):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.seg_name = seg_name

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, features = self.backbone(x)
        outputs = {self.seg_name: logits}
        for name, head in self.heads.items():
            outputs[name] = head(features)
        return outputs

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits only, skipping the auxiliary heads (inference)."""
        return self.backbone(x)[0]
