"""Image- and case-level annotations read next to the data: a labels CSV and a box file.

Labels (``case_labels.csv``): a ``case_id`` column and one column per label, one row per
case; values are class names (strings). An empty cell is a missing label.

Boxes (Kvasir-SEG's ``kavsir_bboxes.json`` layout): ``{image_id: {"height": H, "width": W,
"bbox": [{"xmin", "ymin", "xmax", "ymax"}, ...]}}`` in the original image's pixels. mtlseg
keeps **one box per image, the union of the listed boxes** (the box of all polyps, as a box
derived from a mask is the box of all foreground), normalised to [0, 1] as (x1, y1, x2, y2).
An image with no box listed has none: the box task skips it in its loss and metrics.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mtlseg.errors import DataError

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


def read_case_labels(path: Path) -> dict[str, dict[str, str]]:
    """``{case_id: {column: value}}``; empty cells are left out."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read the labels file ({err})") from None
    if not rows or "case_id" not in rows[0]:
        raise DataError(f"{path}: a labels file needs a header with a 'case_id' column")
    labels: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        case = (row.pop("case_id") or "").strip()
        if not case:
            raise DataError(f"{path}, line {line}: empty case_id")
        if case in labels:
            raise DataError(f"{path}, line {line}: case {case!r} is listed twice")
        labels[case] = {k: v.strip() for k, v in row.items() if k and v and v.strip()}
    return labels


def label_columns(path: Path) -> list[str]:
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    return [c for c in header if c != "case_id"]


def read_boxes(path: Path, case_ids: list[str]) -> dict[str, Box | None]:
    """One normalised union box per case of ``case_ids`` (None: no box listed)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read the box file ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected {{image_id: {{height, width, bbox: [...]}}}}")
    known = set(case_ids)
    extra = sorted(set(raw) - known)
    if raw and len(extra) == len(raw):
        raise DataError(
            f"{path}: none of its {len(raw)} image ids is in the dataset (e.g. {extra[0]!r}); "
            "is it the box file of another dataset?"
        )
    if extra:
        log.warning(
            "%s: %d image id(s) not in the dataset are ignored (e.g. %s)",
            path,
            len(extra),
            extra[:3],
        )
    return {case: _union_box(path, case, raw[case]) if case in raw else None for case in case_ids}


def _union_box(path: Path, case: str, entry) -> Box | None:
    try:
        height, width = float(entry["height"]), float(entry["width"])
        boxes = [(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in entry.get("bbox") or []]
    except (KeyError, TypeError) as err:
        raise DataError(f"{path}: entry {case!r} lacks {err} (need height, width, bbox)") from None
    for x1, y1, x2, y2 in boxes:
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise DataError(
                f"{path}: box ({x1}, {y1}, {x2}, {y2}) of {case!r} is empty or outside its "
                f"{int(width)}x{int(height)} image"
            )
    if not boxes:
        return None
    x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x2, y2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    return (x1 / width, y1 / height, x2 / width, y2 / height)


def find_annotation(root: Path, setting: str | None, pattern: str, what: str) -> Path | None:
    """``auto``: the one file matching ``pattern`` at the dataset root, if any; None: none;
    otherwise a path (relative to the root) that must exist."""
    if setting is None:
        return None
    if setting == "auto":
        found = sorted(root.glob(pattern))
        if len(found) > 1:
            raise DataError(
                f"{root}: several {what} files ({', '.join(p.name for p in found)}); "
                f"choose one with data.{what}"
            )
        return found[0] if found else None
    path = Path(setting)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(f"{path}: {what} file does not exist (data.{what})")
    return path


@dataclass
class Annotations:
    """What was found for a dataset: per-case labels and/or boxes, and their files."""

    labels_file: Path | None = None
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    boxes_file: Path | None = None
    boxes: dict[str, Box | None] | None = None

    @property
    def columns(self) -> list[str]:
        return label_columns(self.labels_file) if self.labels_file else []

    def values(self, column: str) -> list[str]:
        """Sorted distinct values of ``column`` over every case of the file."""
        return sorted({row[column] for row in self.labels.values() if column in row})

    def require(self, column: str, cases: list[str], who: str, classes: list[str] | None) -> None:
        """Every case of ``cases`` must have a label in ``column`` (one of ``classes``)."""
        if self.labels_file is None:
            raise DataError(
                f"{who}: needs a labels file (case_labels.csv at the data root, or data.labels)"
            )
        if column not in self.columns:
            raise DataError(
                f"{self.labels_file}: no column {column!r} ({who}); columns: {', '.join(self.columns)}"
            )
        missing = [c for c in cases if column not in self.labels.get(c, {})]
        if missing:
            raise DataError(
                f"{self.labels_file}: {len(missing)} case(s) have no {column!r} label ({who}), "
                f"e.g. {', '.join(missing[:3])}"
            )
        if classes is not None:
            unknown = sorted({self.labels[c][column] for c in cases} - set(classes))
            if unknown:
                raise DataError(
                    f"{self.labels_file}: unknown {column!r} value {unknown[0]!r} ({who}); "
                    f"classes: {', '.join(classes)}"
                )


def load_annotations(
    root: Path, labels: str | None, boxes: str | None, cases: list[str], is_volume: bool
) -> Annotations:
    out = Annotations()
    out.labels_file = find_annotation(root, labels, "case_labels.csv", "labels")
    if out.labels_file is not None:
        out.labels = read_case_labels(out.labels_file)
    out.boxes_file = find_annotation(root, boxes, "*bboxes.json", "boxes")
    if out.boxes_file is not None:
        if is_volume:
            raise DataError(
                f"{out.boxes_file}: box files are for 2D images, this dataset holds volumes"
            )
        out.boxes = read_boxes(out.boxes_file, cases)
    return out
