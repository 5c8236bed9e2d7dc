"""Loss weighting strategies by registry name: task losses -> one scalar to optimise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtlseg.config import build_dataclass
from mtlseg.errors import ConfigError
from mtlseg.registry import Registry

WEIGHTINGS: Registry[type] = Registry("weighting")


class Weighting(nn.Module):
    """``weights(losses, step, epoch) -> {task: weight}``; forward returns the weighted sum.

    ``primary`` is the segmentation task's name; ``task_weights`` each task's recipe weight.

    Stateful strategies (learned log-variances, loss histories) keep their state in this
    module, so it is saved in checkpoints with the model.
    """

    Config: type = object

    def __init__(self, task_weights: dict[str, float], cfg: Any, primary: str) -> None:
        super().__init__()
        self.task_weights = dict(task_weights)
        self.cfg = cfg
        self.primary = primary

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError

    def forward(
        self, losses: dict[str, torch.Tensor], step: int = 0, epoch: int = 0
    ) -> torch.Tensor:
        weights = self.weights(losses, step, epoch)
        return sum(weights[name] * loss for name, loss in losses.items())


@dataclass
class FixedParams:
    pass


@WEIGHTINGS.register("fixed")
class FixedWeighting(Weighting):
    """L = sum_t w_t L_t with each task's ``weight`` from the recipe (paper 000 eq. 1: alpha, beta)."""

    Config = FixedParams

    def weights(self, losses, step, epoch=0):
        return {name: self.task_weights[name] for name in losses}


@dataclass
class ConstantParams:
    c: float = 0.1  # paper 001 found 1:9 (aux:main) better than 1:1


@WEIGHTINGS.register("constant")
class ConstantWeighting(Weighting):
    """Paper 001 eq. (2): L = L_seg + c * sum_aux L_aux (each task's recipe weight applies too)."""

    Config = ConstantParams

    def aux_factor(self, step: int, epoch: int) -> float:
        return self.cfg.c

    def weights(self, losses, step, epoch=0):
        factor = self.aux_factor(step, epoch)
        return {
            name: self.task_weights[name] * (1.0 if name == self.primary else factor)
            for name in losses
        }


@dataclass
class DecayParams:
    c: float = 0.1
    unit: str = "epoch"  # t counts epochs or optimiser steps, from 1

    def __post_init__(self) -> None:
        if self.unit not in ("epoch", "step"):
            raise ValueError(f"unit must be epoch or step, got {self.unit!r}")


@WEIGHTINGS.register("decay")
class DecayWeighting(ConstantWeighting):
    """Paper 001 eq. (3): L = L_seg + (c / t) * sum_aux L_aux, with t = epoch + 1 (default) or
    step + 1, so the first epoch (step) has weight c."""

    Config = DecayParams

    def aux_factor(self, step: int, epoch: int) -> float:
        t = (epoch if self.cfg.unit == "epoch" else step) + 1
        return self.cfg.c / t


def build_weighting(
    kind: str, params: dict[str, Any], task_weights: dict[str, float], primary: str
) -> Weighting:
    cls = WEIGHTINGS.get(kind)
    try:
        cfg = build_dataclass(cls.Config, params, "weighting.params")
    except ValueError as err:
        raise ConfigError(f"weighting.params: {err}") from None
    return cls(task_weights, cfg, primary)
