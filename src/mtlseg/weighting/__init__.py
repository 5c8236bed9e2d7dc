"""Loss weightings and gradient aggregators by registry name (``weighting.kind``)."""

from mtlseg.weighting import aggregators, gradnorm, history, learned, static  # noqa: F401  (register)
from mtlseg.weighting.base import (
    LIKELIHOODS,
    WEIGHTINGS,
    BackwardContext,
    Weighting,
    build_weighting,
)

__all__ = [
    "LIKELIHOODS",
    "WEIGHTINGS",
    "BackwardContext",
    "Weighting",
    "build_weighting",
]
