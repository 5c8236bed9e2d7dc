"""On-disk dataset formats (plain folder, nnU-Net raw) -> a list of cases, by registry."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtlseg.data.io import IMAGE_ENDINGS, LOSSY_ENDINGS, NIFTI_ENDINGS, file_ending, stem
from mtlseg.errors import DataError
from mtlseg.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class CaseRecord:
    """One case: its id, one file per input channel group, its label file (None: an image
    without a mask, which can only join the unlabelled pool), and any dense per-pixel target
    arrays (name -> file, e.g. NYUv2's depth and normals)."""

    case_id: str
    image_files: list[Path]
    label_file: Path | None
    dense_files: dict[str, Path] = field(default_factory=dict)


@dataclass
class DatasetIndex:
    """What a format found: the cases, class names, and how masks are to be read."""

    root: Path
    format: str
    cases: list[CaseRecord]
    class_names: list[str] | None  # None: infer from the masks (folder, labels mode)
    # the allowed raw label values, in class order: value label_values[i] is class i
    label_values: list[int] | None = None
    lossy_masks: bool = False
    extra: dict = field(default_factory=dict)
    split: dict[str, list[str]] | None = None  # the format's own train/val split, if it has one
    # dense target arrays every case carries: name -> how augmentation transforms it
    # (mtlseg.data.transforms.DENSE_KINDS)
    dense_kinds: dict[str, str] = field(default_factory=dict)


FORMATS: Registry[Any] = Registry("data format")  # classes with detect() and discover()


def _log_unmasked(masks_dir: Path, case_ids: list[str]) -> None:
    """Images without a mask join the unlabelled pool (they cannot train or validate a
    segmentation); say how many."""
    if case_ids:
        log.info(
            "%s: %d image(s) without a mask join the unlabelled pool, e.g. %s",
            masks_dir,
            len(case_ids),
            case_ids[:3],
        )


def _supported(path: Path) -> bool:
    return file_ending(path) in IMAGE_ENDINGS + NIFTI_ENDINGS


@FORMATS.register("folder")
class FolderFormat:
    """``images/`` + ``masks/`` matched by file stem (2D images or NIfTI volumes)."""

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "images").is_dir() and (root / "masks").is_dir()

    @staticmethod
    def discover(root: Path) -> DatasetIndex:
        images = {stem(p): p for p in sorted((root / "images").iterdir()) if _supported(p)}
        masks = {stem(p): p for p in sorted((root / "masks").iterdir()) if _supported(p)}
        problems = [
            f"{p}: mask without image (no images/{s}.*)"
            for s, p in masks.items()
            if s not in images
        ]
        if problems:
            raise DataError("\n".join(problems))
        _log_unmasked(root / "masks", [s for s in images if s not in masks])
        cases = [CaseRecord(s, [images[s]], masks.get(s)) for s in sorted(images)]
        lossy = any(file_ending(m) in LOSSY_ENDINGS for m in masks.values())
        return DatasetIndex(root, "folder", cases, None, lossy_masks=lossy)


@FORMATS.register("nnunet")
class NnUNetFormat:
    """nnU-Net raw: ``dataset.json`` + ``imagesTr/CASE_XXXX<ending>`` + ``labelsTr/CASE<ending>``."""

    REQUIRED_KEYS = ("channel_names", "labels", "file_ending")

    @staticmethod
    def detect(root: Path) -> bool:
        return (root / "dataset.json").is_file()

    @classmethod
    def read_dataset_json(cls, root: Path) -> dict:
        path = root / "dataset.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{path}: unreadable JSON ({err})") from None
        if not isinstance(meta, dict):
            raise DataError(f"{path}: expected a JSON object")
        missing = [k for k in cls.REQUIRED_KEYS if k not in meta]
        if missing:
            raise DataError(
                f"{path}: missing keys {missing} (nnU-Net needs {list(cls.REQUIRED_KEYS)})"
            )
        labels = meta["labels"]
        if not isinstance(labels, dict) or not all(isinstance(v, int) for v in labels.values()):
            raise DataError(
                f"{path}: 'labels' must map names to integer values (regions are not supported)"
            )
        values = sorted(labels.values())
        if values != list(range(len(values))):
            raise DataError(f"{path}: label values must be 0..N-1, got {values}")
        if not isinstance(meta["channel_names"], dict) or not meta["channel_names"]:
            raise DataError(f"{path}: 'channel_names' must be a non-empty mapping")
        return meta

    subsets = ("Tr", "Ts")

    @classmethod
    def discover(cls, root: Path, subset: str = "Tr") -> DatasetIndex:
        """``subset``: ``Tr`` (imagesTr/labelsTr) or ``Ts`` (imagesTs/labelsTs, a test set)."""
        meta = cls.read_dataset_json(root)
        ending = meta["file_ending"]
        channels = sorted(int(k) for k in meta["channel_names"])
        images_dir, labels_dir = root / f"images{subset}", root / f"labels{subset}"
        for d in (images_dir, labels_dir):
            if not d.is_dir():
                raise DataError(
                    f"{d}: folder missing (nnU-Net raw needs images{subset}/ and labels{subset}/)"
                )
        labels = {
            p.name[: -len(ending)]: p
            for p in sorted(labels_dir.iterdir())
            if p.name.endswith(ending)
        }
        case_ids = sorted(
            {p.name[: -len(ending) - 5] for p in images_dir.iterdir() if p.name.endswith(ending)}
        )
        problems, cases = [], []
        for case_id in case_ids:
            files = [images_dir / f"{case_id}_{c:04d}{ending}" for c in channels]
            missing = [f for f in files if not f.exists()]
            problems += [f"{f}: channel file missing for case {case_id}" for f in missing]
            if not missing:
                cases.append(CaseRecord(case_id, files, labels.get(case_id)))
        problems += [f"{p}: mask without image" for c, p in labels.items() if c not in case_ids]
        if problems:
            raise DataError("\n".join(problems))
        _log_unmasked(labels_dir, [c for c in case_ids if c not in labels])
        names = [n for n, _ in sorted(meta["labels"].items(), key=lambda kv: kv[1])]
        return DatasetIndex(
            root,
            "nnunet",
            cases,
            names,
            label_values=sorted(meta["labels"].values()),
            extra={"channel_names": meta["channel_names"]},
        )


NYUV2_CLASSES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects",
    "painting", "sofa", "table", "tv", "wall", "window",
)  # fmt: skip


@FORMATS.register("nyuv2")
class NYUv2Format:
    """NYUv2 as the MTAN authors preprocess it (paper 004's data): ``train/`` and ``val/``,
    each with ``image/``, ``label/``, ``depth/`` and ``normal/`` holding ``{i}.npy``: image
    (H, W, 3) in [0, 1], label (H, W) in -1..12 (13 classes, -1 unlabelled), depth (H, W[, 1])
    in metres (0 = no reading), normal (H, W, 3) unit vectors (0 = none).

    Cases are ``train_{i}`` / ``val_{i}`` and the two folders are the split. Label -1 becomes
    class 0 ``unlabelled``, class c becomes c + 1: train the segmentation with
    ``ignore_index: 0`` (recipe ``nyuv2-geometry``) to leave those pixels out of the loss and
    the metrics, as the MTAN code does.
    """

    SPLITS = ("train", "val")
    FOLDERS = ("image", "label", "depth", "normal")

    @classmethod
    def detect(cls, root: Path) -> bool:
        return all((root / s / "image").is_dir() for s in cls.SPLITS)

    @classmethod
    def discover(cls, root: Path) -> DatasetIndex:
        problems, cases, split = [], [], {}
        for name in cls.SPLITS:
            folders = {f: root / name / f for f in cls.FOLDERS}
            problems += [
                f"{d}: folder missing (NYUv2 layout)" for d in folders.values() if not d.is_dir()
            ]
            if problems:
                continue
            found = {f: {p.stem: p for p in d.glob("*.npy")} for f, d in folders.items()}
            ids = sorted(found["image"], key=lambda s: (len(s), s))
            for other in cls.FOLDERS[1:]:
                problems += [
                    f"{found['image'][i]}: no {other}/{i}.npy beside it"
                    for i in ids
                    if i not in found[other]
                ]
                problems += [
                    f"{p}: {other} array without image/{i}.npy"
                    for i, p in found[other].items()
                    if i not in found["image"]
                ]
            split[name] = [f"{name}_{i}" for i in ids]
            cases += [
                CaseRecord(
                    f"{name}_{i}",
                    [found["image"][i]],
                    found["label"].get(i, folders["label"] / f"{i}.npy"),
                    {k: found[k].get(i, folders[k] / f"{i}.npy") for k in ("depth", "normal")},
                )
                for i in ids
            ]
        if problems:
            raise DataError("\n".join(problems[:20]))
        return DatasetIndex(
            root,
            "nyuv2",
            cases,
            ["unlabelled", *NYUV2_CLASSES],
            label_values=list(range(-1, len(NYUV2_CLASSES))),
            split=split,
            dense_kinds={"depth": "depth", "normal": "vector"},
        )


def discover(root: Path | str, fmt: str = "auto", subset: str = "Tr") -> DatasetIndex:
    """Find the cases of the dataset at ``root`` in format ``fmt`` (or the one detected);
    ``subset: Ts`` reads a format's test cases (nnU-Net's imagesTs/labelsTs)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist")
    if fmt == "auto":
        found = [name for name in FORMATS.names() if FORMATS.get(name).detect(root)]
        if not found:
            raise DataError(
                f"{root}: no dataset found (expected images/ + masks/, nnU-Net's dataset.json + "
                "imagesTr/ + labelsTr/, or NYUv2's train/ + val/ .npy folders)"
            )
        fmt = found[0]
    reader = FORMATS.get(fmt)
    if subset != "Tr" and subset not in getattr(reader, "subsets", ()):
        raise DataError(
            f"{root}: a {fmt} dataset has no separate test cases (nnU-Net's imagesTs/labelsTs)"
        )
    index = reader.discover(root, subset) if subset != "Tr" else reader.discover(root)
    if not index.cases:
        raise DataError(f"{root}: empty dataset, no image/mask pairs found")
    return index


def discover_unlabelled(folders: list[str], known: set[str]) -> list[CaseRecord]:
    """Cases of images without masks from ``data.unlabelled_dirs``: each folder holds image
    files (2D or NIfTI; nnU-Net's ``CASE_0000`` channel files are grouped into one case),
    a plain folder or an nnU-Net ``imagesTr``/``imagesTs``. Case ids are ``<folder>-<stem>``;
    one that collides with the dataset's is an error, as are an empty folder and one that
    holds masks."""
    records: list[CaseRecord] = []
    for name in folders:
        folder = Path(name)
        if not folder.is_dir():
            raise DataError(f"{folder}: unlabelled folder does not exist (data.unlabelled_dirs)")
        if any((folder / m).is_dir() for m in ("masks", "labelsTr", "labelsTs")):
            raise DataError(
                f"{folder}: holds masks (a labelled dataset); give the folder of its images "
                "(images/, imagesTr/) as data.unlabelled_dirs, or use it as the dataset"
            )
        files = sorted(p for p in folder.iterdir() if _supported(p))
        if not files:
            raise DataError(f"{folder}: no image files to add to the unlabelled pool")
        groups: dict[str, list[Path]] = {}
        for path in files:
            s = stem(path)
            case = s[:-5] if len(s) > 5 and s[-5] == "_" and s[-4:].isdigit() else s
            groups.setdefault(case, []).append(path)
        for case, channel_files in sorted(groups.items()):
            case_id = f"{folder.name}-{case}"
            if case_id in known:
                raise DataError(f"{channel_files[0]}: case id {case_id!r} is already taken")
            known.add(case_id)
            records.append(CaseRecord(case_id, channel_files, None))
    return records
