"""Aligned-MTL (Senushkin et al. 2023): aligned gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS


@dataclass
class AlignedMTLParams(AggregatorParams):
    scale_mode: str = "min"  # min | median | rmse: the balance transformation's scale

    def __post_init__(self) -> None:
        if self.scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be min, median or rmse, got {self.scale_mode!r}")


@WEIGHTINGS.register("aligned-mtl")
class AlignedMTLWeighting(AggregatorWeighting[AlignedMTLParams]):
    """Aligned-MTL (Senushkin et al. 2023, Algorithm 1): align the gradients' principal
    components so the system of gradients is well conditioned."""

    Config = AlignedMTLParams

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        from torchjd.aggregation import AlignedMTL

        return AlignedMTL(scale_mode=cast(Any, self.cfg.scale_mode))  # checked by its Config
