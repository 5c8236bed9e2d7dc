"""Box regression metrics: mean corner L2 distance (pixels of the model input) and box IoU."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise IoU of (N, 4) x1, y1, x2, y2 boxes -> (N,); a degenerate pair scores 0."""
    lo, hi = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    union = area(a) + area(b) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


class BoxMetrics(Metric):
    """``update(pred (B, 4) in [0, 1], target (B, 5): valid flag + box)``; images without a
    box are skipped. ``compute`` -> {"l2": mean ||pred - box||_2 over the 4 coordinates, in
    pixels of a ``size`` x ``size`` input; "iou": mean box IoU; "count"}."""

    full_state_update = False
    l2: torch.Tensor
    iou: torch.Tensor
    count: torch.Tensor

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.add_state("l2", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("iou", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = target[:, 0] > 0
        pred, box = pred[valid].float(), target[valid, 1:].float()
        self.l2 += ((pred - box) * self.size).norm(dim=1).sum().double()
        self.iou += box_iou(pred, box).sum().double()
        self.count += int(valid.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.count.clamp(min=1).double()
        return {"l2": (self.l2 / n).float(), "iou": (self.iou / n).float()}
