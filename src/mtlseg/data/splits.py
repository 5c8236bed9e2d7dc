"""Train/val splits by case, by patient, or "seen patients, unseen scans" (paper 001)."""

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
SPLIT_MODES = ("case", "patient", "seen-patients")


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


def seeded_patient_split(
    patients: dict[str, str], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Hold out ``val_fraction`` of the patients with all their cases."""
    by_patient = seeded_split(sorted(set(patients.values())), val_fraction, seed)
    val = set(by_patient["val"])
    return {
        "train": sorted(c for c, p in patients.items() if p not in val),
        "val": sorted(c for c, p in patients.items() if p in val),
    }


def _seen_patients(
    patients: dict[str, str], val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Paper 001's patient-day split, generalised: for ``val_fraction`` of the patients that
    have two or more scans, one seeded scan goes to val; every other scan trains."""
    scans: dict[str, list[str]] = {}
    for case, patient in sorted(patients.items()):
        scans.setdefault(patient, []).append(case)
    multi = sorted(p for p, cases in scans.items() if len(cases) >= 2)
    if not multi:
        raise DataError(
            "split_mode seen-patients needs patients with two or more scans; every patient has "
            "one (patient ids come from the case ids via data.case_pattern)"
        )
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    n_val = min(max(1, round(val_fraction * len(scans))), len(multi))
    val = sorted(str(rng.choice(scans[p])) for p in rng.permutation(multi)[:n_val])
    return {"train": sorted(set(patients) - set(val)), "val": val}


def resolve_split(
    root: Path,
    patients: dict[str, str],
    cfg: DataConfig,
    builtin: dict[str, list[str]] | None = None,
) -> tuple[dict[str, list[str]], str]:
    """The split to use and where it came from. ``patients``: case id -> patient id;
    ``builtin``: the format's own split (NYUv2's train/ and val/ folders), if any.

    Modes (``data.split_mode``): ``case`` and ``patient`` honour a splits file when there is
    one, else the format's own split (``patient`` also checks that no patient is on both
    sides), and otherwise hold out a seeded fraction of cases / patients; ``seen-patients``
    always draws its own split.
    """
    mode, seed, fraction = cfg.split_mode, cfg.split_seed, cfg.val_fraction
    if mode not in SPLIT_MODES:
        raise DataError(f"data.split_mode: expected one of {', '.join(SPLIT_MODES)}, got {mode!r}")
    seeded = f"seeded {mode} split (seed {seed}, val fraction {fraction})"
    if mode == "seen-patients":
        split = _seen_patients(patients, fraction, seed)
        validate_split(split, list(patients), seeded)
        return split, seeded
    path = find_split_file(root, cfg)
    if path is None and builtin is not None:
        source = f"{root}: the dataset's own train/val folders"
        validate_split(builtin, list(patients), source)
        return builtin, source
    if path is None:
        if mode == "case":
            return seeded_split(list(patients), fraction, seed), seeded
        if len(patients) > 1 and all(p == c for c, p in patients.items()):
            seeded = (
                f"seeded split by image (no patient id found in the case ids by "
                f"data.case_pattern; seed {seed}, val fraction {fraction})"
            )
        return seeded_patient_split(patients, fraction, seed), seeded
    split = read_split_file(path, cfg.fold)
    validate_split(split, list(patients), str(path), cfg.allow_unlisted)
    if mode == "patient":
        shared = sorted({patients[c] for c in split["train"]} & {patients[c] for c in split["val"]})
        if shared:
            raise DataError(
                f"{path}: patient(s) {shared[:5]} have cases in both train and val; "
                "use data.split_mode=seen-patients for that, or case to accept it"
            )
    return split, str(path)


def validate_split(
    split: dict[str, list[str]], case_ids: list[str], source: str, allow_unlisted: bool = False
) -> None:
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
    if unused and not allow_unlisted:
        raise DataError(
            f"{source}: {len(unused)} case(s) of the dataset are in no split, e.g. {unused[:5]}; "
            "add them to train or val, or set data.allow_unlisted=true to leave them out"
        )
    if unused:
        log.warning(
            "%s: %d case(s) are in no split and are not used: %s", source, len(unused), unused[:10]
        )


def write_split(
    split: dict[str, list[str]], path: Path, source: str, label_source: str = "all"
) -> None:
    """The split as a run records it: ``train`` (the labelled training cases, also as
    ``labelled``), ``val``, ``unlabelled`` (the pool) and where they came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"source": source, "label_source": label_source, **split, "labelled": split["train"]}
    record.setdefault("unlabelled", [])
    path.write_text(json.dumps(record, indent=1))


PATIENT_HINT = (
    "frames of one patient or video on both sides of a split inflate the scores: give the "
    "patient of each case by a pattern (--set data.case_pattern='^(?P<patient>[^_]+)_') or "
    "by a splits.json listing train and val cases (docs/data.md)"
)
