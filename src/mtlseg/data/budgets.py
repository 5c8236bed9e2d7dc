"""Label budgets: which training patients (cases, under ``split_mode: case``) keep their
masks. The rest of the training split is the unlabelled pool, whose masks are never read."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mtlseg.errors import DataError

BUDGET_FILE = "label_budgets.json"  # {"7": [patient ids], ...} at the data root (SSL4MIS's)


def _units(split_mode: str) -> str:
    return "case" if split_mode == "case" else "patient"


def resolve_label_budget(
    root: Path,
    train: list[str],
    patients: dict[str, str],
    budget: Any,
    split_mode: str,
    seed: int,
) -> tuple[list[str], list[str], str]:
    """(labelled training cases, unlabelled training cases, where the budget came from).

    Patients (cases under ``split_mode: case``) are what a budget counts and draws: a
    patient's scans are labelled together. A count under patient splits is read from
    ``label_budgets.json`` at the data root when that file has it (as ``splits.json`` is
    honoured), otherwise drawn with ``seed``; a fraction is rounded to at least one."""
    if budget == "all":
        return sorted(train), [], "all training cases"
    unit = _units(split_mode)
    owner = {c: (c if unit == "case" else patients[c]) for c in train}
    pool = sorted(set(owner.values()))
    chosen, source = _chosen(root, pool, budget, unit, seed)
    outside = sorted(set(chosen) - set(pool))
    if outside:
        raise DataError(
            f"{source}: {len(outside)} {unit}(s) of the label budget are not in the training "
            f"split, e.g. {outside[:3]}"
        )
    keep = set(chosen)
    labelled = sorted(c for c in train if owner[c] in keep)
    return labelled, sorted(c for c in train if owner[c] not in keep), source


def _chosen(
    root: Path, pool: list[str], budget: Any, unit: str, seed: int
) -> tuple[list[str], str]:
    """The labelled patients (or cases) and the budget's source."""
    if isinstance(budget, str) and budget != "all":
        if budget.isdigit():
            return _chosen(root, pool, int(budget), unit, seed)
        return _read_list(Path(budget)), budget
    count = budget if isinstance(budget, int) else max(1, math.floor(budget * len(pool) + 0.5))
    if count > len(pool):
        raise DataError(
            f"data.label_budget={budget}: the training split has only {len(pool)} {unit}s"
        )
    listed = root / BUDGET_FILE
    if isinstance(budget, int) and unit == "patient" and listed.is_file():
        lists = _read_budget_file(listed)
        if str(count) in lists:
            return lists[str(count)], f"{listed} ({count} {unit}s)"
    if isinstance(budget, int) and unit == "case" and listed.is_file():
        raise DataError(
            f"{listed}: a label_budgets.json lists patients; with data.split_mode=case give "
            "data.label_budget as a path to a list of case ids"
        )
    order = np.random.default_rng(seed).permutation(pool).tolist()
    return sorted(order[:count]), f"seeded draw of {count} {unit}(s) (data.label_seed {seed})"


def _read_list(path: Path) -> list[str]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable label budget list ({err})") from None
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise DataError(f"{path}: a label budget file holds a non-empty JSON list of ids")
    return raw


def _read_budget_file(path: Path) -> dict[str, list[str]]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    if not isinstance(raw, dict):
        raise DataError(f'{path}: expected {{"<count>": [patient ids], ...}}')
    return {k: [str(x) for x in v] for k, v in raw.items() if k.isdigit() and isinstance(v, list)}
