"""Weightings with weights fixed by the recipe or drawn at random: no learned state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

from mtlseg.weighting.base import WEIGHTINGS, Weighting


@dataclass
class FixedParams:
    pass


@WEIGHTINGS.register("fixed")
class FixedWeighting(Weighting[FixedParams]):
    """L = sum_t w_t L_t with each task's ``weight`` from the recipe (paper 000 eq. 1: alpha, beta)."""

    Config = FixedParams

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        return {name: self.task_weights[name] for name in losses}


@dataclass
class ConstantParams:
    c: float = 0.1  # paper 001 found 1:9 (aux:main) better than 1:1


CoP = TypeVar("CoP", bound=ConstantParams)


@WEIGHTINGS.register("constant")
class ConstantWeighting(Weighting[CoP]):
    """Paper 001 eq. (2): L = L_seg + c * sum_aux L_aux (each task's recipe weight applies too)."""

    Config = ConstantParams

    def aux_factor(self, step: int, epoch: int) -> float:
        return self.cfg.c

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        factor = self.aux_factor(step, epoch)
        return {
            name: self.task_weights[name] * (1.0 if name == self.primary else factor)
            for name in losses
        }


@dataclass
class DecayParams(ConstantParams):
    unit: str = "epoch"  # t counts epochs or optimiser steps, from 1

    def __post_init__(self) -> None:
        if self.unit not in ("epoch", "step"):
            raise ValueError(f"unit must be epoch or step, got {self.unit!r}")


@WEIGHTINGS.register("decay")
class DecayWeighting(ConstantWeighting[DecayParams]):
    """Paper 001 eq. (3): L = L_seg + (c / t) * sum_aux L_aux, with t = epoch + 1 (default) or
    step + 1, so the first epoch (step) has weight c."""

    Config = DecayParams

    def aux_factor(self, step: int, epoch: int) -> float:
        t = (epoch if self.cfg.unit == "epoch" else step) + 1
        return self.cfg.c / t


@dataclass
class EqualParams:
    pass


@WEIGHTINGS.register("equal")
class EqualWeighting(Weighting[EqualParams]):
    """L = sum_t L_t: every loss weight 1, the recipe's weights ignored (the "EW" baseline of
    the multi-task literature, against which every other method is measured)."""

    Config = EqualParams

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        return {name: 1.0 for name in losses}


@dataclass
class RLWParams:
    pass


@WEIGHTINGS.register("rlw")
class RandomLossWeighting(Weighting[RLWParams]):
    """Random Loss Weighting (Lin et al. 2022, eq. 4): lambda = softmax(z), z ~ N(0, I) drawn
    afresh every step from the seeded global generator, times each recipe weight."""

    Config = RLWParams

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        names = list(losses)
        if not self.training:
            return {n: self.task_weights[n] / len(names) for n in names}
        lam = torch.softmax(torch.randn(len(names)), dim=0)
        return {n: self.task_weights[n] * float(v) for n, v in zip(names, lam, strict=True)}
