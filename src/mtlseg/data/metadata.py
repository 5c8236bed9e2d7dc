"""Per-slice metadata that a volume gives for free (paper 001): patient, phase, position, size.

Computed once when a case is loaded and kept beside its slices, so tasks (position
regression, adjacency for contrastive pairs) and FiLM read it from the batch without
touching the files again. A value that a case does not have is NaN, never a guess.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from mtlseg.errors import ConfigError, DataError

# Numeric fields of the per-slice vector ``batch["meta"]``, in this order.
META_FIELDS = (
    "position",  # slice_index / (num_slices - 1); NaN for a single-slice case
    "slice_index",
    "num_slices",
    "phase",  # the number in the phase/scan tag (ACDC frame01 -> 1); NaN when absent
    "patient_number",  # the number in the patient id (paper 001's "case number")
    "height",  # in-plane size before resizing, pixels
    "width",
    "pixel_height",  # in-plane pixel size from the NIfTI affine; NaN when unknown
    "pixel_width",
)


@dataclass(frozen=True)
class CaseMeta:
    """What is known about one case (a 2D image or a volume)."""

    case_id: str
    patient_id: str
    phase: str | None
    num_slices: int
    height: int
    width: int
    pixel_height: float = math.nan
    pixel_width: float = math.nan

    def slice_vectors(self) -> np.ndarray:
        """(num_slices, len(META_FIELDS)) float32, one row per slice."""
        n = self.num_slices
        index = np.arange(n, dtype=np.float64)
        position = index / (n - 1) if n > 1 else np.full(n, np.nan)
        constant = [
            n,
            _number(self.phase),
            _number(self.patient_id),
            self.height,
            self.width,
            self.pixel_height,
            self.pixel_width,
        ]
        rows = np.column_stack([position, index, *(np.full(n, v, np.float64) for v in constant)])
        return rows.astype(np.float32)


def _number(tag: str | None) -> float:
    digits = re.findall(r"\d+", tag or "")
    return float(digits[-1]) if digits else math.nan


def parse_case_id(case_id: str, pattern: str) -> tuple[str, str | None]:
    """(patient id, phase tag or None). A case id the pattern does not match is its own patient."""
    try:
        match = re.match(pattern, case_id, flags=re.IGNORECASE)
    except re.error as err:
        raise ConfigError(f"data.case_pattern: invalid regular expression ({err})") from None
    if match is None:
        return case_id, None
    groups = match.groupdict()
    return groups.get("patient") or case_id, groups.get("phase")


def pixel_size(affine: np.ndarray | None) -> tuple[float, float]:
    """In-plane pixel size (rows, columns) of a (Z, H, W) volume read from NIfTI (X, Y, Z).

    An identity affine carries no spacing (ACDC's release, many converters): unknown, NaN.
    """
    if affine is None or np.allclose(affine, np.eye(4)):
        return math.nan, math.nan
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return float(spacing[0]), float(spacing[1])


def case_meta(
    case_id: str, shape: tuple[int, ...], affine: np.ndarray | None, pattern: str
) -> CaseMeta:
    """Metadata of a case whose image array is (Z, H, W, ...)."""
    patient, phase = parse_case_id(case_id, pattern)
    ph, pw = pixel_size(affine)
    return CaseMeta(case_id, patient, phase, int(shape[0]), int(shape[1]), int(shape[2]), ph, pw)


# fields that identify the case rather than describe the image: conditioning on one lets a
# model recognise the case (ACDC numbers its patients in blocks of 20 per diagnosis)
IDENTIFIER_FIELDS = ("patient_number",)


def field_indices(fields: list[str] | tuple[str, ...], key: str) -> list[int]:
    """Column of each named field in ``batch["meta"]``; unknown names list the valid ones."""
    unknown = [f for f in fields if f not in META_FIELDS]
    if unknown:
        raise ConfigError(
            f"{key}: unknown metadata field {unknown[0]!r}; valid fields: {', '.join(META_FIELDS)}"
        )
    return [META_FIELDS.index(f) for f in fields]


def require_fields(
    values: np.ndarray, case_ids: list[str], fields: list[str], who: str, where: str
) -> None:
    """Raise DataError naming the cases for which a field ``who`` needs is unknown (NaN)."""
    for field, column in zip(fields, field_indices(fields, who), strict=True):
        missing = sorted({c for c, v in zip(case_ids, values[:, column], strict=True) if v != v})
        if missing:
            raise DataError(
                f"{where}: metadata field {field!r} needed by {who} is unknown for "
                f"{len(missing)} case(s), e.g. {missing[:3]} ({_why(field)})"
            )


def _why(field: str) -> str:
    return {
        "position": "single-slice cases have no position",
        "phase": "the case id has no phase tag; see data.case_pattern",
        "patient_number": "the patient id has no number",
        "pixel_height": "no spacing in the file (identity affine or a 2D image)",
        "pixel_width": "no spacing in the file (identity affine or a 2D image)",
    }.get(field, "not recorded")
