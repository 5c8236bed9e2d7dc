"""IMTL-G (Liu et al. 2021): impartial multi-task learning, gradient part."""

from __future__ import annotations

from typing import Any

from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS


@WEIGHTINGS.register("imtl-g")
class IMTLGWeighting(AggregatorWeighting[AggregatorParams]):
    """IMTL-G (Liu et al. 2021, eq. 10): the update with equal projections onto every task's
    unit gradient."""

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        from torchjd.aggregation import IMTLG

        return IMTLG()
