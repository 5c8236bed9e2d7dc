"""Metrics of dense geometric tasks as the depth/normal literature reports them
(Eigen & Fergus 2015): absolute and relative error; angle error and the share of pixels
within 11.25, 22.5 and 30 degrees."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class DepthMetrics(Metric):
    """``update(pred, (target, valid))`` over valid pixels: {"abs_err": mean |p - t|,
    "rel_err": mean |p - t| / |t| over pixels with |t| >= ``min_target``}."""

    full_state_update = False
    abs_sum: torch.Tensor
    rel_sum: torch.Tensor
    count: torch.Tensor
    rel_count: torch.Tensor

    def __init__(self, min_target: float = 1e-3) -> None:
        super().__init__()
        self.min_target = min_target
        for name in ("abs_sum", "rel_sum"):
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        for name in ("count", "rel_count"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> None:
        t, valid = target
        p, t = pred.float()[valid], t.float()[valid]
        err = (p - t).abs()
        self.abs_sum += err.sum().double()
        self.count += err.numel()
        rel = t.abs() >= self.min_target
        self.rel_sum += (err[rel] / t[rel].abs()).sum().double()
        self.rel_count += int(rel.sum())

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "abs_err": (self.abs_sum / self.count.clamp(min=1)).float(),
            "rel_err": (self.rel_sum / self.rel_count.clamp(min=1)).float(),
        }


class NormalMetrics(Metric):
    """``update(pred, (target, valid))`` with unit vectors on dim 2 of (B, C, D, ...):
    angle errors in degrees over valid pixels -> mean, median, and the fraction within
    11.25, 22.5 and 30 degrees. Keeps every valid angle (the median needs them)."""

    full_state_update = False
    THRESHOLDS = (11.25, 22.5, 30.0)
    angles: list[torch.Tensor]

    def __init__(self) -> None:
        super().__init__()
        self.add_state("angles", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> None:
        t, valid = target
        p = torch.nn.functional.normalize(pred.float(), dim=2)
        cos = (p * t.float()).sum(2).clamp(-1.0, 1.0)[valid]
        self.angles.append(torch.rad2deg(torch.acos(cos)))

    def compute(self) -> dict[str, torch.Tensor]:
        angles = dim_zero_cat(self.angles) if self.angles else torch.zeros(0)
        if angles.numel() == 0:
            nan = torch.tensor(float("nan"))
            return {"mean_angle": nan, "median_angle": nan}
        out = {"mean_angle": angles.mean(), "median_angle": angles.median()}
        for t in self.THRESHOLDS:
            out[f"within_{t:g}"] = (angles <= t).float().mean()
        return out
