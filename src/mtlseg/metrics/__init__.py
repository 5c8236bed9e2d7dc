"""Segmentation metrics (one protocol: per case and class, nnU-Net's empty-class convention)
and the auxiliary tasks' own metrics."""

from mtlseg.metrics.segmentation import (
    EMPTY_CONVENTIONS,
    SegmentationMetrics,
    confusion_counts,
    hd95,
    protocol,
    score_case,
    summarise,
)

__all__ = [
    "EMPTY_CONVENTIONS",
    "SegmentationMetrics",
    "confusion_counts",
    "hd95",
    "protocol",
    "score_case",
    "summarise",
]
