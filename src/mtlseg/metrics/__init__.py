"""Segmentation metrics: per-class and mean Dice, IoU, HD95, pixel accuracy, per-volume Dice."""

from mtlseg.metrics.segmentation import SegmentationMetrics, confusion_counts, hd95

__all__ = ["SegmentationMetrics", "confusion_counts", "hd95"]
