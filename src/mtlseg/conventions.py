"""Names the command line offers as choices, kept free of heavy imports so that building the
parser (``mtlseg --help``) loads neither torch nor MONAI."""

from __future__ import annotations

# how a class in neither prediction nor truth of a case scores (mtlseg.metrics.segmentation)
EMPTY_CONVENTIONS = ("exclude", "one", "zero")
