"""Auxiliary tasks from where a slice sits in its volume (paper 001, section 4.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtlseg.errors import TrainingError
from mtlseg.models.heads import PooledHead
from mtlseg.tasks.base import Requirements, Task, register_task


@dataclass
class PositionParams:
    features: str = "bottleneck"
    hidden: int = 64


@register_task("position")
class PositionTask(Task[PositionParams]):
    """Regress the normalised slice position index/(n-1) from the bottleneck with MSE
    (paper 001 eq. 4). Output (B,), target ``batch["position"]``."""

    Config = PositionParams
    requires = Requirements(meta=("position",))

    def build_head(self) -> nn.Module:
        p = self.params
        info = self.ctx.backbone.feature_info[p.features]
        return PooledHead(p.features, info.channels, p.hidden, 1)

    def target(self, batch: dict[str, Any]) -> Any:
        return batch["position"].float()

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.mse_loss(output[:, 0].float(), target)


@dataclass
class ContrastiveParams:
    features: str = "bottleneck"
    hidden: int = 128  # projection head: pool, Linear(C, hidden), ReLU, Linear(hidden, dim)
    dim: int = 64
    temperature: float = 0.1


@register_task("contrastive")
class ContrastiveTask(Task[ContrastiveParams]):
    """SimCLR-style InfoNCE (paper 001 eq. 5) where a slice's positive is an adjacent slice of
    the same volume and every other sample of the batch is a negative.

    Batches come from a pair sampler (``train.sampler: pairs | patient-pairs``) that puts
    partners at positions (2k, 2k+1); ``target`` checks that they are truly adjacent.
    """

    Config = ContrastiveParams
    requires = Requirements(pairs=True)
    likelihood = "classification"

    def build_head(self) -> nn.Module:
        p = self.params
        info = self.ctx.backbone.feature_info[p.features]
        return PooledHead(p.features, info.channels, p.hidden, p.dim)

    def target(self, batch: dict[str, Any]) -> Any:
        n = len(batch["case_id"])
        partner = torch.arange(n) ^ 1
        slices = batch["slice_index"].tolist()
        bad = [
            i
            for i in range(0, n, 2)
            if i + 1 >= n
            or batch["case_id"][i] != batch["case_id"][i + 1]
            or abs(slices[i] - slices[i + 1]) != 1
        ]
        if bad:
            raise TrainingError(
                f"contrastive task: batch samples {bad[0]} and {bad[0] + 1} are not adjacent "
                "slices of one volume (use train.sampler=pairs or patient-pairs)"
            )
        return partner.to(batch["image"].device)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return info_nce(output, target, self.params.temperature)


def info_nce(z: torch.Tensor, partner: torch.Tensor, temperature: float) -> torch.Tensor:
    """Paper 001 eq. (5): -log exp(s(i,i+)/t) / sum_{j != i} exp(s(i,j)/t), s = cosine, mean
    over the batch. (B, D) embeddings, (B,) index of each sample's positive."""
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    return F.cross_entropy(sim, partner)
