"""UPGrad (Quinton & Rey 2024): unconflicting projection of gradients."""

from __future__ import annotations

from typing import Any

from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS


@WEIGHTINGS.register("upgrad")
class UPGradWeighting(AggregatorWeighting[AggregatorParams]):
    """UPGrad (Quinton & Rey 2024, eq. 5): project each gradient onto the dual cone of all
    of them, then average."""

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        from torchjd.aggregation import UPGrad

        return UPGrad()
