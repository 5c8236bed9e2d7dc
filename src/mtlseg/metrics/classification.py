"""Image-level classification metrics from one confusion matrix (torchmetrics, syncs in DDP)."""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassConfusionMatrix


class ClassificationMetrics(MulticlassConfusionMatrix):
    """``update(logits (B, K), target (B,))``; ``compute`` -> {"accuracy", "balanced_accuracy":
    the mean recall over the classes present in the targets, "recall": (K,) per class, NaN
    for a class without samples}."""

    def compute(self) -> dict[str, torch.Tensor]:
        cm = super().compute().double()  # rows: true class, columns: predicted
        support = cm.sum(1)
        recall = torch.where(support > 0, cm.diag() / support.clamp(min=1), torch.nan)
        return {
            "accuracy": (cm.diag().sum() / cm.sum().clamp(min=1)).float(),
            "balanced_accuracy": recall[support > 0].mean().float(),
            "recall": recall.float(),
        }
