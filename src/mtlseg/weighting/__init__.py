"""Loss weighting strategies by registry name: task losses -> one scalar to optimise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlseg.config import build_dataclass
from mtlseg.registry import Registry

WEIGHTINGS: Registry[type] = Registry("weighting")


class Weighting(nn.Module):
    """``weights(losses, step) -> {task: weight}``; forward returns the weighted sum.

    Stateful strategies (learned log-variances, loss histories) keep their state in this
    module, so it is saved in checkpoints with the model.
    """

    Config: type = object

    def __init__(self, task_weights: dict[str, float], cfg: Any) -> None:
        super().__init__()
        self.task_weights = dict(task_weights)
        self.cfg = cfg

    def weights(
        self, losses: dict[str, torch.Tensor], step: int
    ) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError

    def forward(self, losses: dict[str, torch.Tensor], step: int = 0) -> torch.Tensor:
        weights = self.weights(losses, step)
        return sum(weights[name] * loss for name, loss in losses.items())


@dataclass
class FixedParams:
    pass


@WEIGHTINGS.register("fixed")
class FixedWeighting(Weighting):
    """L = sum_t w_t L_t with each task's ``weight`` from the recipe (paper 000 eq. 1: alpha, beta)."""

    Config = FixedParams

    def weights(self, losses, step):
        return {name: self.task_weights[name] for name in losses}


def build_weighting(kind: str, params: dict[str, Any], task_weights: dict[str, float]) -> Weighting:
    cls = WEIGHTINGS.get(kind)
    return cls(task_weights, build_dataclass(cls.Config, params, "weighting.params"))
