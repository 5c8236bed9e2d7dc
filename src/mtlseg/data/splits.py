"""Train/val splits by case: a given splits file is honoured, otherwise a seeded split is made."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from mtlseg.config import DataConfig
from mtlseg.errors import DataError

log = logging.getLogger(__name__)
SPLIT_FILES = ("splits.json", "splits_final.json")
SPLIT_NAMES = ("train", "val")


def find_split_file(root: Path, cfg: DataConfig) -> Path | None:
    if cfg.splits:
        path = Path(cfg.splits)
        if not path.is_file():
            raise DataError(f"{path}: split file does not exist (data.splits)")
        return path
    return next((root / n for n in SPLIT_FILES if (root / n).is_file()), None)


def read_split_file(path: Path, fold: int) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...]}``, or nnU-Net's list of such folds (``fold`` picks one)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: unreadable split file ({err})") from None
    if isinstance(raw, list):
        if not 0 <= fold < len(raw):
            raise DataError(
                f"{path}: fold {fold} requested, the file has {len(raw)} folds (data.fold)"
            )
        raw = raw[fold]
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object with 'train' and 'val' lists")
    for name in SPLIT_NAMES:
        if name not in raw:
            raise DataError(f"{path}: missing split {name!r}")
        if not isinstance(raw[name], list) or not raw[name]:
            raise DataError(f"{path}: split {name!r} is empty")
    return {name: [str(c) for c in raw[name]] for name in SPLIT_NAMES}


def seeded_split(case_ids: list[str], val_fraction: float, seed: int) -> dict[str, list[str]]:
    """Shuffle case ids with ``seed`` and hold out ``val_fraction`` of them (at least one)."""
    if len(case_ids) < 2:
        raise DataError(f"cannot split {len(case_ids)} case(s) into train and val; need at least 2")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(sorted(case_ids)).tolist()
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return {"train": sorted(order[n_val:]), "val": sorted(order[:n_val])}


def resolve_split(
    root: Path, case_ids: list[str], cfg: DataConfig
) -> tuple[dict[str, list[str]], str]:
    """The split to use and where it came from; case ids are checked against the dataset."""
    path = find_split_file(root, cfg)
    if path is None:
        return seeded_split(case_ids, cfg.val_fraction, cfg.split_seed), (
            f"seeded split (seed {cfg.split_seed}, val fraction {cfg.val_fraction})"
        )
    split = read_split_file(path, cfg.fold)
    validate_split(split, case_ids, str(path))
    return split, str(path)


def validate_split(split: dict[str, list[str]], case_ids: list[str], source: str) -> None:
    known = set(case_ids)
    for name in SPLIT_NAMES:
        if not split.get(name):
            raise DataError(f"{source}: split {name!r} is missing or empty")
        unknown = [c for c in split[name] if c not in known]
        if unknown:
            raise DataError(
                f"{source}: split {name!r} names cases not in the dataset: {unknown[:5]}"
            )
    overlap = sorted(set(split["train"]) & set(split["val"]))
    if overlap:
        raise DataError(f"{source}: cases in both train and val: {overlap[:5]}")
    unused = sorted(known - set(split["train"]) - set(split["val"]))
    if unused:
        log.warning(
            "%s: %d case(s) are in no split and are not used: %s", source, len(unused), unused[:10]
        )


def write_split(split: dict[str, list[str]], path: Path, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"source": source, **split}, indent=1))
