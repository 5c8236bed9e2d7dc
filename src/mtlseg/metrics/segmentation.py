"""Segmentation metrics accumulated per sample in a torchmetrics ``Metric`` (syncs under DDP).

Conventions (stated once, used everywhere):
- Dice and IoU are computed per sample (slice or image) and class, then averaged over
  samples; the mean over classes excludes background.
- A class absent from both prediction and ground truth scores Dice = IoU = 1 (a correct
  empty prediction), and HD95 = 0.
- A class present in exactly one of them scores Dice = IoU = 0, and HD95 = the image
  diagonal (the largest distance possible), so a missed or hallucinated structure is
  penalised instead of silently dropped.
- Per-volume Dice sums the true/false positives and false negatives over all slices of a
  case before taking 2TP / (2TP + FP + FN); it is reported when a case has several slices.
- HD95 (95th-percentile symmetric Hausdorff distance, MONAI) is in pixels of the resized
  image: the datasets here carry no reliable spacing.
"""

from __future__ import annotations

import math
import warnings

import torch
from monai.metrics import compute_hausdorff_distance
from torchmetrics import Metric


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, valid: torch.Tensor | None = None
):
    """(B, H, W) or (B, H, W, D) labels -> tp, fp, fn, each (B, K) per sample and class;
    only pixels where ``valid`` (same shape) is true count."""
    p = torch.nn.functional.one_hot(pred.long(), num_classes).flatten(1, -2)  # (B, HW[D], K)
    t = torch.nn.functional.one_hot(target.long(), num_classes).flatten(1, -2)
    if valid is not None:
        keep = valid.flatten(1)[..., None].to(p.dtype)
        p, t = p * keep, t * keep
    tp = (p * t).sum(1)
    return tp, p.sum(1) - tp, t.sum(1) - tp


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with the empty-empty convention (den == 0 -> 1)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num, dtype=torch.float))


def hd95(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W[, D]) labels -> (B, K) 95th-percentile Hausdorff distance (2D or 3D),
    conventions above."""
    p = torch.nn.functional.one_hot(pred.long(), num_classes).movedim(-1, 1).float()
    t = torch.nn.functional.one_hot(target.long(), num_classes).movedim(-1, 1).float()
    p_any, t_any = p.flatten(2).any(-1), t.flatten(2).any(-1)
    out = torch.zeros(p.shape[:2])
    both = p_any & t_any
    if both.any():
        with warnings.catch_warnings():  # empty classes are handled by the convention above
            warnings.simplefilter("ignore")
            dist = compute_hausdorff_distance(
                p.cpu(), t.cpu(), include_background=True, percentile=95
            )
        out = torch.where(both.cpu(), torch.nan_to_num(dist.float(), nan=0.0), out)
    diagonal = math.hypot(*pred.shape[1:])
    return torch.where((p_any ^ t_any).cpu(), torch.full_like(out, diagonal), out)


def pooled_scores(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, mean_over: list[int] | None = None
) -> dict[str, float]:
    """Scores from counts pooled over every pixel of the set (paper 002's F1 and weighted IoU).

    ``f1/mean``: per-class pixel F1 = 2TP / (2TP + FP + FN) over all pixels, mean over
    foreground classes (Dice averages per sample instead). ``weighted_iou``: frequency-weighted
    IoU (Long et al. 2015): sum_k (t_k / sum t) IoU_k over all classes, background included,
    with t_k the true pixels of class k. ``mean_over``: the classes of the F1 mean
    (default: all but class 0).
    """
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    iou = _ratio(tp, tp + fp + fn)
    truth = tp + fn
    fg = f1[mean_over] if mean_over is not None else f1[1:] if len(f1) > 1 else f1
    return {
        "f1/mean": float(fg.mean()),
        "weighted_iou": float((truth * iou).sum() / truth.sum().clamp(min=1)),
    }


class SegmentationMetrics(Metric):
    """Collects per-sample confusion counts (and optionally HD95) with their case index.

    ``update(pred, target, case_index)`` with labels (B, H, W) and case indices (B,);
    ``compute()`` returns a flat dict of floats: ``dice/<class>``, ``dice/mean``, ``iou/...``,
    ``hd95/...``, ``pixel_accuracy``, ``f1/mean``, ``weighted_iou`` (``pooled_scores``) and,
    for multi-slice cases, ``volume_dice/...``.

    Whole volumes (B, H, W, D) are samples too: every metric is then per volume (3D Dice,
    IoU, HD95) and ``volume_dice`` equals ``dice``, so 2D and 3D runs compare on one key.

    ``ignore_index``: pixels of that true class are left out of every count (HD95 treats
    them as predicted correctly) and the class is left out of the means.
    """

    full_state_update = False

    def __init__(
        self, class_names: list[str], with_hd95: bool = False, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        self.class_names, self.with_hd95 = list(class_names), with_hd95
        self.ignore_index = ignore_index
        for name in ("tp", "fp", "fn", "hd", "case", "correct", "pixels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor, case_index: torch.Tensor) -> None:
        k = len(self.class_names)
        valid = None if self.ignore_index is None else target != self.ignore_index
        if valid is not None:
            pred = torch.where(valid, pred, target)  # an ignored pixel is never an error
        tp, fp, fn = confusion_counts(pred, target, k, valid)
        self.tp.append(tp), self.fp.append(fp), self.fn.append(fn)
        self.case.append(case_index.to(tp.device).long())
        counted = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
        self.correct.append(((pred == target) & counted).flatten(1).sum(1))
        self.pixels.append(counted.flatten(1).sum(1))
        if self.with_hd95:
            self.hd.append(hd95(pred, target, k).to(tp.device))
        self.volumetric = pred.dim() == 4

    @staticmethod
    def _cat(state) -> torch.Tensor:
        return torch.cat(state) if isinstance(state, list) else state

    def compute(self) -> dict[str, float]:
        tp, fp, fn = (self._cat(s).double() for s in (self.tp, self.fp, self.fn))
        result: dict[str, float] = {}
        per_metric = {
            "dice": _ratio(2 * tp, 2 * tp + fp + fn),
            "iou": _ratio(tp, tp + fp + fn),
        }
        if self.with_hd95:
            per_metric["hd95"] = self._cat(self.hd).double()
        for metric, values in per_metric.items():
            self._add_per_class(result, metric, values.mean(0))
        result["pixel_accuracy"] = float(
            self._cat(self.correct).sum() / self._cat(self.pixels).sum()
        )
        result.update(pooled_scores(tp.sum(0), fp.sum(0), fn.sum(0), self._mean_classes()))
        case = self._cat(self.case)
        if getattr(self, "volumetric", False):  # every sample is a whole volume
            self._add_per_class(result, "volume_dice", per_metric["dice"].mean(0))
        elif case.unique().numel() < case.numel():  # several slices per case: volumes
            n_cases = int(case.max()) + 1
            sums = [
                torch.zeros(n_cases, tp.shape[1], dtype=tp.dtype).index_add_(0, case.cpu(), x.cpu())
                for x in (tp, fp, fn)
            ]
            seen = torch.zeros(n_cases, dtype=torch.bool).index_fill_(0, case.cpu(), True)
            vtp, vfp, vfn = (s[seen] for s in sums)
            self._add_per_class(result, "volume_dice", _ratio(2 * vtp, 2 * vtp + vfp + vfn).mean(0))
        return result

    def _add_per_class(
        self, result: dict[str, float], metric: str, per_class: torch.Tensor
    ) -> None:
        for name, value in zip(self.class_names, per_class.tolist(), strict=True):
            result[f"{metric}/{name}"] = value
        result[f"{metric}/mean"] = float(per_class[self._mean_classes()].mean())

    def _mean_classes(self) -> list[int]:
        """Classes the means run over: the foreground, less an ignored class."""
        left_out = {0, self.ignore_index} if len(self.class_names) > 1 else set()
        return [i for i in range(len(self.class_names)) if i not in left_out]
