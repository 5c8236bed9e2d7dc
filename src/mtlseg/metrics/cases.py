"""Per-case scores at a case's own resolution (and spacing), their summary, and their files.

Used by ``mtlseg evaluate`` (a checkpoint on any data) and ``mtlseg evaluate-folder``
(predicted masks against ground truth, as nnU-Net's evaluate-folder). The conventions are
those of ``SegmentationMetrics``: a class absent from both scores Dice = IoU = 1 and HD95 = 0;
present in one only, Dice = IoU = 0 and HD95 = the case's diagonal (in its units).
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from mtlseg.data.io import (
    IMAGE_ENDINGS,
    LOSSY_ENDINGS,
    NIFTI_ENDINGS,
    file_ending,
    read_volume,
    stem,
    voxel_spacing,
)
from mtlseg.errors import DataError
from mtlseg.metrics.segmentation import confusion_counts

MASK_ENDINGS = IMAGE_ENDINGS + NIFTI_ENDINGS


def score_case(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    class_names: list[str],
    spacing: tuple[float, ...] | None = None,
    with_hd95: bool = True,
    ignore_index: int | None = None,
) -> dict[str, float]:
    """One case: labels (H, W) or (Z, H, W) -> {"dice/<class>", "iou/<class>",
    "hd95/<class>", and the means over the foreground}. ``spacing``: the size of a voxel
    along each axis of ``pred`` (HD95 in those units; pixels when None)."""
    p, t = torch.as_tensor(np.asarray(pred)).long(), torch.as_tensor(np.asarray(truth)).long()
    if p.shape != t.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and truth {tuple(t.shape)} differ in size")
    k = len(class_names)
    valid = None if ignore_index is None else t != ignore_index
    if valid is not None:
        p = torch.where(valid, p, t)
    keep = None if valid is None else valid[None]
    tp, fp, fn = (x[0].double() for x in confusion_counts(p[None], t[None], k, keep))
    scores = {
        "dice": torch.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), 1.0),
        "iou": torch.where(tp + fp + fn > 0, tp / (tp + fp + fn).clamp(min=1), 1.0),
    }
    if with_hd95:
        scores["hd95"] = _hd95(p, t, k, spacing)
    out: dict[str, float] = {}
    fg = [i for i in range(k) if i not in {0, ignore_index}] if k > 1 else [0]
    for metric, values in scores.items():
        for name, v in zip(class_names, values.tolist(), strict=True):
            out[f"{metric}/{name}"] = float(v)
        out[f"{metric}/mean"] = float(values[fg].mean())
    return out


def _hd95(p: torch.Tensor, t: torch.Tensor, k: int, spacing) -> torch.Tensor:
    """Per class 95th-percentile Hausdorff distance of one case, conventions above."""
    spacing = tuple(spacing) if spacing is not None else (1.0,) * p.dim()
    po = torch.nn.functional.one_hot(p, k).movedim(-1, 0)[None].float()
    to = torch.nn.functional.one_hot(t, k).movedim(-1, 0)[None].float()
    p_any, t_any = po.flatten(2).any(-1)[0], to.flatten(2).any(-1)[0]
    out = torch.zeros(k, dtype=torch.float64)
    both = p_any & t_any
    if both.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = compute_hausdorff_distance(
                po, to, include_background=True, percentile=95, spacing=list(spacing)
            )[0]
        out = torch.where(both, torch.nan_to_num(d.double(), nan=0.0), out)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(p.shape, spacing, strict=True)))
    return torch.where(p_any ^ t_any, torch.full_like(out, diagonal), out)


def summarise(rows: list[dict], worst: int = 5) -> dict:
    """Mean and std of every score over the cases, and the ``worst`` cases by mean Dice."""
    keys = [k for k in rows[0] if k != "case"] if rows else []
    summary = {
        k: {
            "mean": float(np.mean([r[k] for r in rows])),
            "std": float(np.std([r[k] for r in rows])),
        }
        for k in keys
    }
    order = sorted(rows, key=lambda r: r.get("dice/mean", 0.0))
    return {
        "num_cases": len(rows),
        "metrics": summary,
        "worst": [{"case": r["case"], "dice/mean": r["dice/mean"]} for r in order[:worst]],
    }


def write_scores(rows: list[dict], summary: dict, json_path: Path) -> tuple[Path, Path]:
    """``json_path`` (summary and every case) and a CSV beside it, one row per case."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"summary": summary, "cases": rows}, indent=1))
    csv_path = json_path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        writer.writeheader()
        writer.writerows(rows)
    return json_path, csv_path


def format_summary(summary: dict) -> str:
    """Lines for the terminal: mean +- std of the mean scores and of each class, worst cases."""
    lines = [f"{summary['num_cases']} case(s)"]
    for key, s in summary["metrics"].items():
        lines.append(f"{key:28s} {s['mean']:.4f} +- {s['std']:.4f}")
    if summary["worst"]:
        lines.append("worst cases by mean Dice:")
        lines += [f"  {w['case']:26s} {w['dice/mean']:.4f}" for w in summary["worst"]]
    return "\n".join(lines)


def _masks(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    found = {stem(p): p for p in sorted(folder.iterdir()) if file_ending(p) in MASK_ENDINGS}
    if not found:
        raise DataError(f"{folder}: no mask files ({', '.join(MASK_ENDINGS)})")
    return found


def folder_classes(
    labels: Path | None, truths: dict[str, np.ndarray], lossy: bool = False
) -> tuple[list[str], bool]:
    """Class names (from nnU-Net's dataset.json ``labels``, or the values found) and whether
    the masks are binary images (0/255, or JPEG: thresholded at 127 as training reads them)."""
    if labels is not None:
        try:
            mapping = json.loads(labels.read_text())["labels"]
            names = [n for n, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
            values = sorted(int(v) for v in mapping.values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"{labels}: cannot read its 'labels' ({err})") from None
        if values != list(range(len(values))):
            raise DataError(f"{labels}: label values must be 0..N-1, got {values}")
        return names, False
    values = set().union(*(np.unique(t).tolist() for t in truths.values()))
    if lossy or values <= {0, 255}:
        return ["background", "foreground"], True
    top = int(max(values))
    return ["background"] + [f"class{i}" for i in range(1, max(top, 1) + 1)], False


def evaluate_folder(
    pred_dir: Path | str,
    gt_dir: Path | str,
    labels: Path | str | None = None,
    with_hd95: bool = True,
) -> tuple[list[dict], dict]:
    """Score every ground-truth mask of ``gt_dir`` against the prediction of the same name
    in ``pred_dir`` (PNG/TIFF or NIfTI; HD95 in the NIfTI header's spacing)."""
    preds, truths = _masks(Path(pred_dir)), _masks(Path(gt_dir))
    missing = [
        f"{p}: no prediction {stem(p)}.* in {pred_dir}" for n, p in truths.items() if n not in preds
    ]
    extra = [
        f"{p}: prediction without ground truth in {gt_dir}"
        for n, p in preds.items()
        if n not in truths
    ]
    if missing or extra:
        raise DataError("\n".join((missing + extra)[:20]))
    read = {n: _read_mask(p) for n, p in truths.items()}
    lossy = any(file_ending(p) in LOSSY_ENDINGS for p in truths.values())
    names, binary = folder_classes(
        Path(labels) if labels else None, {n: m for n, (m, _) in read.items()}, lossy
    )
    rows = []
    for name, (truth, affine) in read.items():
        pred, _ = _read_mask(preds[name])
        if pred.shape != truth.shape:
            raise DataError(
                f"{preds[name]}: size {pred.shape} differs from the ground truth's {truth.shape} "
                f"({truths[name]})"
            )
        if binary:
            pred, truth = (pred > 127).astype(np.int64), (truth > 127).astype(np.int64)
        for array, path in ((pred, preds[name]), (truth, truths[name])):
            bad = sorted(set(np.unique(array).tolist()) - set(range(len(names))))
            if bad:
                raise DataError(f"{path}: label value(s) {bad[:5]} not in the classes {names}")
        volume = truth.shape[0] > 1
        spacing = voxel_spacing(affine, 3 if volume else 2)
        row = {"case": name}
        row.update(
            score_case(
                pred if volume else pred[0],
                truth if volume else truth[0],
                names,
                spacing,
                with_hd95,
            )
        )
        rows.append(row)
    return rows, summarise(rows)


def _read_mask(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A mask file -> (labels (Z, H, W) int64, affine or None); colour masks: any channel."""
    array, affine = read_volume(path)
    if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
        raise DataError(f"{path}: mask has non-integer values")
    return array.max(axis=-1).astype(np.int64), affine
