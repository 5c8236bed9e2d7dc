"""Loss weightings and gradient aggregators by registry name (``weighting.kind``)."""

from mtlseg.registry import import_submodules
from mtlseg.weighting.base import (
    LIKELIHOODS,
    WEIGHTINGS,
    BackwardContext,
    Weighting,
    build_weighting,
)

import_submodules(__name__)  # every weighting module registers itself

__all__ = [
    "LIKELIHOODS",
    "WEIGHTINGS",
    "BackwardContext",
    "Weighting",
    "build_weighting",
]
