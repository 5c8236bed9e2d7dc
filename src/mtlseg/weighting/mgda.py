"""MGDA (Sener & Koltun 2018): multiple-gradient descent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS


@dataclass
class MGDAParams(AggregatorParams):
    epsilon: float = 0.001  # Frank-Wolfe stopping tolerance
    max_iters: int = 100


@WEIGHTINGS.register("mgda")
class MGDAWeighting(AggregatorWeighting[MGDAParams]):
    """MGDA (Sener & Koltun 2018, Algorithm 2): the min-norm point of the gradients' convex
    hull, by Frank-Wolfe."""

    Config = MGDAParams

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        from torchjd.aggregation import MGDA

        return MGDA(epsilon=self.cfg.epsilon, max_iters=self.cfg.max_iters)
