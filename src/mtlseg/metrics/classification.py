"""Image-level classification metrics from one confusion matrix (a torchmetrics state, summed
over the processes under DDP)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ClassificationMetrics(Metric):
    """``update(logits (B, K) or class indices (B,), target (B,))``; ``compute`` ->
    {"accuracy", "balanced_accuracy": the mean recall over the classes present in the
    targets, "recall": (K,) per class, NaN for a class without samples}."""

    full_state_update = False
    matrix: torch.Tensor  # (K, K) counts; rows: true class, columns: predicted

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        zeros = torch.zeros(num_classes, num_classes, dtype=torch.long)
        self.add_state("matrix", zeros, dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        k = self.num_classes
        labels = pred.argmax(1) if pred.dim() == 2 else pred
        pairs = target.long().flatten() * k + labels.long().flatten()
        self.matrix += torch.bincount(pairs, minlength=k * k).view(k, k).to(self.matrix.device)

    def compute(self) -> dict[str, torch.Tensor]:
        cm = self.matrix.double()
        support = cm.sum(1)
        recall = torch.where(support > 0, cm.diag() / support.clamp(min=1), torch.nan)
        return {
            "accuracy": (cm.diag().sum() / cm.sum().clamp(min=1)).float(),
            "balanced_accuracy": recall[support > 0].mean().float(),
            "recall": recall.float(),
        }
