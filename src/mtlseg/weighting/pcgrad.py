"""PCGrad (Yu et al. 2020): gradient surgery."""

from __future__ import annotations

from typing import Any

from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS


@WEIGHTINGS.register("pcgrad")
class PCGradWeighting(AggregatorWeighting[AggregatorParams]):
    """PCGrad (Yu et al. 2020, Algorithm 1): project each gradient off the ones it conflicts
    with, then sum."""

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        from torchjd.aggregation import PCGrad

        return PCGrad()
