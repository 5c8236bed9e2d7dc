"""Scores files and ``mtlseg evaluate-folder`` (predicted masks against ground truth, as
nnU-Net's evaluate-folder). The scores themselves are ``mtlseg.metrics.segmentation``'s."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

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
from mtlseg.metrics.segmentation import score_case, summarise

MASK_ENDINGS = IMAGE_ENDINGS + NIFTI_ENDINGS


def write_scores(rows: list[dict], summary: dict, json_path: Path) -> tuple[Path, Path]:
    """``json_path`` (the protocol, the summary and every case) and a CSV beside it, one row
    per case (undefined scores, NaN, as empty cells), each row ending with the protocol's
    version and empty-class convention."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    record = {"protocol": summary["protocol"], "summary": summary, "cases": rows}
    json_path.write_text(json.dumps(without_nan(record), indent=1))
    csv_path = json_path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        columns = list(dict.fromkeys(k for r in rows for k in r)) or ["case"]
        writer = csv.DictWriter(f, fieldnames=[*columns, "protocol", "empty"], restval="")
        writer.writeheader()
        stamp = {"protocol": summary["protocol"]["version"], "empty": summary["protocol"]["empty"]}
        writer.writerows(
            {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} | stamp
            for r in rows
        )
    return json_path, csv_path


def without_nan(value):
    """``value`` with every NaN float (an undefined score) as None: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    return value


def format_summary(summary: dict) -> str:
    """Lines for the terminal: mean +- std of the mean scores and of each class, worst cases."""
    empty = summary["protocol"]["empty"]
    lines = [f"{summary['num_cases']} case(s); a class in neither prediction nor truth: {empty}"]
    for key, s in summary["metrics"].items():
        lines.append(f"{key:28s} {s['mean']:.4f} +- {s['std']:.4f}  (n={s['n']})")
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
    found: set[int] = set().union(*(np.unique(t).tolist() for t in truths.values()))
    if lossy or found <= {0, 255}:
        return ["background", "foreground"], True
    top = int(max(found))  # >= 1: a set without it is within {0, 255}
    return ["background"] + [f"class{i}" for i in range(1, top + 1)], False


def evaluate_folder(
    pred_dir: Path | str,
    gt_dir: Path | str,
    labels: Path | str | None = None,
    with_hd95: bool = True,
    empty: str = "exclude",
) -> tuple[list[dict], dict]:
    """Score every ground-truth mask of ``gt_dir`` against the prediction of the same name
    in ``pred_dir`` (PNG/TIFF or NIfTI; HD95 in the NIfTI header's spacing), by the
    protocol of ``mtlseg.metrics.segmentation`` with the ``empty`` convention."""
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
        row: dict[str, str | float] = {"case": name}
        row.update(
            score_case(
                pred if volume else pred[0],
                truth if volume else truth[0],
                names,
                spacing,
                with_hd95,
                empty=empty,
            )
        )
        rows.append(row)
    return rows, summarise(rows, names, empty=empty)


def _read_mask(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A mask file -> (labels (Z, H, W) int64, affine or None); colour masks: any channel."""
    array, affine = read_volume(path)
    if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
        raise DataError(f"{path}: mask has non-integer values")
    return array.max(axis=-1).astype(np.int64), affine
