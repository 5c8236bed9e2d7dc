"""CAGrad (Liu et al. 2021): conflict-averse gradient descent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS


@dataclass
class CAGradParams(AggregatorParams):
    c: float = 0.4  # radius of the ball around the mean gradient (Liu et al. 2021 use 0.4)


@WEIGHTINGS.register("cagrad")
class CAGradWeighting(AggregatorWeighting[CAGradParams]):
    """CAGrad (Liu et al. 2021, Algorithm 1): the update that maximises the worst task's
    improvement within a ball of radius c ||g_0|| around the mean gradient g_0."""

    Config = CAGradParams
    optional_modules = ("cvxpy",)
    extra = "nash-mtl"

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        from torchjd.aggregation import CAGrad

        return CAGrad(c=self.cfg.c)
