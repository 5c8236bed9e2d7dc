"""The one segmentation metric stack: per case and class, from confusion counts (nnU-Net).

Used by validation (``SegmentationMetrics``, a torchmetrics ``Metric`` that syncs under DDP),
``mtlseg evaluate``, ``mtlseg evaluate-folder`` and ``mtlseg compare`` (``score_case`` and
``summarise``). The protocol, recorded in every scores file as ``PROTOCOL``:

- A **case** is a whole image (2D data) or a whole volume: the slices of a volume are
  scored together (their counts summed), never one by one. Slice-wise Dice
  (``slice_dice``) is a secondary column: per slice, mean over a case's slices, then as
  below.
- Dice = 2TP / (2TP + FP + FN), IoU = TP / (TP + FP + FN) per case and class, from counts.
- **Empty classes** (``empty``): a class absent from both the prediction and the truth
  of a case is undefined and left out (``exclude``, nnU-Net's convention, the default),
  or scores 1 (``one``: a correct empty prediction) or 0 (``zero``: paper 001 §5.2). A
  class absent from the truth but predicted scores 0 under every convention (TP = 0).
  MONAI's ``DiceMetric(ignore_empty=True)`` is not used: it returns NaN whenever the truth
  is empty, false positives included, which inflates scores.
- **HD95** (95th-percentile symmetric Hausdorff distance, MONAI; in the case's spacing):
  both empty follows ``empty`` (NaN, 0 or the diagonal); present in exactly one of them:
  the case's diagonal, the largest distance possible.
- **Aggregation**: per class, the mean over the cases where it is defined (NaN left out);
  ``<metric>/mean`` is the mean of those class means over the foreground classes (a class
  undefined in every case is left out). Per-case rows also carry ``<metric>/mean``, the
  mean over the classes defined in that case.
- ``ignore_index``: pixels of that true class count for nothing (HD95 treats them as
  predicted correctly) and the class is left out of the means.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from torchmetrics import Metric

from mtlseg.conventions import EMPTY_CONVENTIONS

# bump the version when any rule above changes: compare re-scores runs of another version
PROTOCOL_VERSION = 2


def protocol(empty: str) -> dict:
    """The scoring protocol a scores file records (see the module docstring)."""
    check_empty(empty)
    return {
        "version": PROTOCOL_VERSION,
        "empty": empty,
        "hd95_one_empty": "diagonal",
        "unit": "case (image or whole volume)",
        "aggregation": "nanmean over cases per class, then mean over foreground classes",
    }


def check_empty(empty: str) -> str:
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(
            f"empty-class convention {empty!r}: expected one of {', '.join(EMPTY_CONVENTIONS)}"
        )
    return empty


def confusion_counts(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, *spatial) labels -> tp, fp, fn, each (B, K) per sample and class; only pixels
    where ``valid`` (same shape) is true count."""
    p = torch.nn.functional.one_hot(pred.long(), num_classes).flatten(1, -2)  # (B, N, K)
    t = torch.nn.functional.one_hot(target.long(), num_classes).flatten(1, -2)
    if valid is not None:
        keep = valid.flatten(1)[..., None].to(p.dtype)
        p, t = p * keep, t * keep
    tp = (p * t).sum(1)
    return tp, p.sum(1) - tp, t.sum(1) - tp


def _empty_value(empty: str) -> float:
    return {"exclude": math.nan, "one": 1.0, "zero": 0.0}[check_empty(empty)]


def overlap_scores(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, empty: str = "exclude"
) -> dict[str, torch.Tensor]:
    """Dice and IoU from counts of any shape; where TP + FP + FN = 0 (the class is in
    neither prediction nor truth) the ``empty`` convention's value."""
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    none = (tp + fp + fn) == 0
    fill = torch.full_like(tp, _empty_value(empty))
    return {
        "dice": torch.where(none, fill, 2 * tp / (2 * tp + fp + fn).clamp(min=1)),
        "iou": torch.where(none, fill, tp / (tp + fp + fn).clamp(min=1)),
    }


def hd95(
    pred: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    empty: str = "exclude",
) -> torch.Tensor:
    """(B, *spatial) labels of B cases -> (B, K) HD95 in ``spacing`` units (pixels when
    None); both empty: the ``empty`` convention (NaN, 0, the diagonal), one empty: the
    diagonal."""
    spatial = pred.shape[1:]
    spacing = tuple(spacing) if spacing is not None else (1.0,) * len(spatial)
    p = torch.nn.functional.one_hot(pred.long(), num_classes).movedim(-1, 1).float().cpu()
    t = torch.nn.functional.one_hot(target.long(), num_classes).movedim(-1, 1).float().cpu()
    p_any, t_any = p.flatten(2).any(-1), t.flatten(2).any(-1)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(spatial, spacing, strict=True)))
    both_empty = {"exclude": math.nan, "one": 0.0, "zero": diagonal}[check_empty(empty)]
    out = torch.full(p.shape[:2], both_empty, dtype=torch.float64)
    out = torch.where(p_any ^ t_any, torch.full_like(out, diagonal), out)
    both = p_any & t_any
    if both.any():
        with warnings.catch_warnings():  # empty classes are handled above
            warnings.simplefilter("ignore")
            dist = compute_hausdorff_distance(
                p, t, include_background=True, percentile=95, spacing=list(spacing)
            )
        out = torch.where(both, torch.nan_to_num(dist.double(), nan=0.0), out)
    return out


def mean_classes(num_classes: int, ignore_index: int | None = None) -> list[int]:
    """The classes the means run over: the foreground, less an ignored class (a one-class
    problem: that class)."""
    if num_classes == 1:
        return [0]
    return [k for k in range(1, num_classes) if k != ignore_index]


def _nanmean(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Mean over ``dim`` ignoring NaN; NaN where every value is NaN."""
    known = ~values.isnan()
    count = known.sum(dim)
    total = values.nan_to_num(0.0).sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def _class_row(metric: str, values: torch.Tensor, names: list[str], fg: list[int]) -> dict:
    row = {f"{metric}/{n}": float(v) for n, v in zip(names, values.tolist(), strict=True)}
    row[f"{metric}/mean"] = float(_nanmean(values[fg]))
    return row


def score_case(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    class_names: list[str],
    spacing: Sequence[float] | None = None,
    with_hd95: bool = True,
    ignore_index: int | None = None,
    empty: str = "exclude",
) -> dict[str, float]:
    """One case: labels (H, W) or a volume (Z, H, W) -> ``dice/<class>``, ``iou/<class>``,
    ``hd95/<class>`` and each metric's mean over the foreground classes defined in it; for
    a volume also ``slice_dice/<class>`` (per slice, mean over its slices). ``spacing``:
    a voxel's size along each axis of ``pred`` (HD95 in those units; pixels when None)."""
    p, t = torch.as_tensor(np.asarray(pred)).long(), torch.as_tensor(np.asarray(truth)).long()
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ in size")
    k = len(class_names)
    valid = None if ignore_index is None else t != ignore_index
    if valid is not None:
        p = torch.where(valid, p, t)  # an ignored pixel is never an error
    fg = mean_classes(k, ignore_index)
    tp, fp, fn = (x[0] for x in confusion_counts(p[None], t[None], k, _batch(valid)))
    row: dict[str, float] = {}
    for metric, values in overlap_scores(tp, fp, fn, empty).items():
        row.update(_class_row(metric, values, class_names, fg))
    if with_hd95:
        row.update(
            _class_row("hd95", hd95(p[None], t[None], k, spacing, empty)[0], class_names, fg)
        )
    if p.dim() == 3 and p.shape[0] > 1:  # a volume: slice-wise Dice as a secondary column
        counts = confusion_counts(p, t, k, valid)
        per_slice = overlap_scores(*counts, empty)["dice"]
        row.update(_class_row("slice_dice", _nanmean(per_slice), class_names, fg))
    return row


def _batch(valid: torch.Tensor | None) -> torch.Tensor | None:
    return None if valid is None else valid[None]


def summarise(
    rows: list[dict],
    class_names: list[str],
    ignore_index: int | None = None,
    empty: str = "exclude",
    worst: int = 5,
) -> dict:
    """Per-case rows (``score_case``) -> ``{"num_cases", "protocol", "metrics": {key:
    {mean, std, n}}, "worst"}``. A per-class key: mean and std over the cases where it is
    defined (n of them). ``<metric>/mean``: the mean of its foreground class means (the
    headline); its std is over the cases' own means. ``worst``: the cases with the lowest
    mean Dice."""
    keys = [k for k in rows[0] if k != "case"] if rows else []
    summary: dict[str, dict] = {}
    for key in keys:
        values = torch.tensor([float(r[key]) for r in rows], dtype=torch.float64)
        known = values[~values.isnan()]
        summary[key] = {
            "mean": float(known.mean()) if len(known) else math.nan,
            "std": float(known.std(unbiased=False)) if len(known) else math.nan,
            "n": len(known),
        }
    fg = [class_names[k] for k in mean_classes(len(class_names), ignore_index)]
    for key in keys:
        metric, _, last = key.rpartition("/")
        if last == "mean" and all(f"{metric}/{c}" in summary for c in fg):
            means = torch.tensor([summary[f"{metric}/{c}"]["mean"] for c in fg])
            summary[key]["mean"] = float(_nanmean(means.double()))
    order = sorted(rows, key=lambda r: _sort_key(r.get("dice/mean", math.nan)))
    return {
        "num_cases": len(rows),
        "protocol": protocol(empty),
        "metrics": summary,
        "worst": [{"case": r["case"], "dice/mean": r["dice/mean"]} for r in order[:worst]],
    }


def _sort_key(value: float) -> float:
    return math.inf if math.isnan(value) else value


class SegmentationMetrics(Metric):
    """Validation's scores, by the protocol above, at the training size.

    ``update(pred, target, case_index)``: labels (B, H, W) slices or images, or (B, H, W, D)
    whole volumes, and each sample's case index (B,). ``compute()`` sums the counts of each
    case's samples (the slices of a volume) and returns ``dice/<class>``, ``dice/mean``
    (per case: the checkpoint-selection score), ``iou/...``, for cases of several slices
    ``slice_dice/...``, and pooled over every pixel ``pixel_accuracy``, ``f1/mean`` and
    ``weighted_iou`` (``pooled_scores``). HD95 is left to ``score_case`` (``evaluate``).
    """

    full_state_update = False
    tp: list[torch.Tensor]
    fp: list[torch.Tensor]
    fn: list[torch.Tensor]
    case: list[torch.Tensor]
    correct: list[torch.Tensor]
    pixels: list[torch.Tensor]

    def __init__(
        self, class_names: list[str], ignore_index: int | None = None, empty: str = "exclude"
    ) -> None:
        super().__init__()
        self.class_names = list(class_names)
        self.ignore_index, self.empty = ignore_index, check_empty(empty)
        for name in ("tp", "fp", "fn", "case", "correct", "pixels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor, case_index: torch.Tensor) -> None:
        k = len(self.class_names)
        valid = None if self.ignore_index is None else target != self.ignore_index
        if valid is not None:
            pred = torch.where(valid, pred, target)
        tp, fp, fn = confusion_counts(pred, target, k, valid)
        self.tp.append(tp)
        self.fp.append(fp)
        self.fn.append(fn)
        self.case.append(case_index.to(tp.device).long())
        counted = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
        self.correct.append(((pred == target) & counted).flatten(1).sum(1))
        self.pixels.append(counted.flatten(1).sum(1))

    @staticmethod
    def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        return torch.cat(state) if isinstance(state, list) else state

    def compute(self) -> dict[str, float]:
        tp, fp, fn = (self._cat(s).double().cpu() for s in (self.tp, self.fp, self.fn))
        case = self._cat(self.case).cpu()
        fg = mean_classes(len(self.class_names), self.ignore_index)
        cases, inverse = case.unique(return_inverse=True)
        sums = [
            torch.zeros(len(cases), tp.shape[1], dtype=tp.dtype).index_add_(0, inverse, x)
            for x in (tp, fp, fn)
        ]
        result: dict[str, float] = {}
        for metric, per_case in overlap_scores(sums[0], sums[1], sums[2], self.empty).items():
            result.update(_class_row(metric, _nanmean(per_case), self.class_names, fg))
        if len(cases) < len(case):  # several slices per case: the slice-wise column
            per_slice = overlap_scores(tp, fp, fn, self.empty)["dice"]
            counts = torch.zeros(len(cases), tp.shape[1], dtype=tp.dtype)
            totals = torch.zeros_like(counts)
            known = ~per_slice.isnan()
            counts.index_add_(0, inverse, known.double())
            totals.index_add_(0, inverse, per_slice.nan_to_num(0.0))
            per_case = torch.where(counts > 0, totals / counts.clamp(min=1), math.nan)
            result.update(_class_row("slice_dice", _nanmean(per_case), self.class_names, fg))
        result["pixel_accuracy"] = float(
            self._cat(self.correct).sum() / self._cat(self.pixels).sum().clamp(min=1)
        )
        result.update(pooled_scores(tp.sum(0), fp.sum(0), fn.sum(0), fg))
        return result


def pooled_scores(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, mean_over: list[int] | None = None
) -> dict[str, float]:
    """Scores from counts pooled over every pixel of the set (paper 002's F1 and weighted IoU).

    ``f1/mean``: per-class pixel F1 = 2TP / (2TP + FP + FN) over all pixels, mean over
    ``mean_over`` (default: all but class 0; a class with no pixel anywhere is left out).
    ``weighted_iou``: frequency-weighted IoU (Long et al. 2015): sum_k (t_k / sum t) IoU_k
    over all classes, background included, with t_k the true pixels of class k.
    """
    scores = overlap_scores(tp, fp, fn, "exclude")
    f1, iou = scores["dice"], scores["iou"].nan_to_num(0.0)
    truth = tp.double() + fn.double()
    fg = mean_over if mean_over is not None else mean_classes(len(f1))
    return {
        "f1/mean": float(_nanmean(f1[fg])),
        "weighted_iou": float((truth * iou).sum() / truth.sum().clamp(min=1)),
    }
