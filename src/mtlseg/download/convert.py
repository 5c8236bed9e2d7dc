"""Extracted archives -> the layouts mtlseg reads (image/mask folders, nnU-Net raw)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from mtlseg.errors import DataError


def is_stray(path: Path) -> bool:
    """macOS resource forks (``._name``) and ``__MACOSX`` folders that archives carry along."""
    return path.name.startswith("._") or "__MACOSX" in path.parts or path.name == ".DS_Store"


def _find_root(extracted: Path, *required: str) -> Path:
    """The folder of the archive that holds every ``required`` entry (at any depth)."""
    candidates = [extracted, *sorted(p for p in extracted.rglob("*") if p.is_dir())]
    for folder in candidates:
        if not is_stray(folder) and all((folder / r).exists() for r in required):
            return folder
    raise DataError(f"the archive holds no folder with {', '.join(required)}")


def kvasir_to_folder(extracted: Path, out: Path, resize: int | None) -> None:
    """Kvasir-SEG's ``images/`` and ``masks/`` JPEGs -> mtlseg's folder layout.

    ``resize``: both sides to this many pixels (images bilinear as JPEG, masks nearest as PNG
    after the 127 threshold, so they stay binary), the size of the shared copy at 256;
    ``None`` keeps the originals untouched. ``kavsir_bboxes.json`` is kept: its boxes are in
    original pixels with each image's original height and width, so they stay valid."""
    from PIL import Image

    root = _find_root(extracted, "images", "masks")
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for sub in ("images", "masks"):
        for src in sorted((root / sub).iterdir()):
            if is_stray(src) or not src.is_file():
                continue
            if resize is None:
                shutil.move(src, out / sub / src.name)
                continue
            with Image.open(src) as im:
                if sub == "images":
                    im.convert("RGB").resize((resize, resize), Image.Resampling.BILINEAR).save(
                        out / sub / src.name, quality=95
                    )
                else:
                    binary = im.convert("L").point(lambda v: 255 if v > 127 else 0)
                    binary.resize((resize, resize), Image.Resampling.NEAREST).save(
                        out / sub / f"{src.stem}.png"
                    )
    boxes = root / "kavsir_bboxes.json"
    if boxes.is_file():
        shutil.move(boxes, out / boxes.name)


def _case_name(path: Path) -> str:
    return path.name.removesuffix(".nii.gz")


def msd_to_nnunet(extracted: Path, out: Path, resize: int | None) -> None:
    """A Decathlon task (``dataset.json`` + ``imagesTr``/``labelsTr``/``imagesTs``) -> nnU-Net
    v2 raw: ``_0000`` channel suffixes, labels as ``{name: value}``, ``channel_names``,
    ``file_ending``; the archives' ``._*`` files left out. Single-channel tasks only (the small
    ones); ``resize`` does not apply to volumes."""
    if resize is not None:
        raise DataError("--resize applies to 2D image datasets, not to Decathlon volumes")
    root = _find_root(extracted, "dataset.json", "imagesTr", "labelsTr")
    meta = json.loads((root / "dataset.json").read_text())
    modality = meta.get("modality", {"0": "MRI"})
    if len(modality) != 1:
        raise DataError(
            f"{root.name}: {len(modality)} channels per volume; only single-channel "
            "Decathlon tasks are converted (Task02_Heart, Task04_Hippocampus, ...)"
        )
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts = {}
    for sub, suffix in (("imagesTr", "_0000"), ("labelsTr", ""), ("imagesTs", "_0000")):
        files = [p for p in sorted((root / sub).glob("*.nii.gz")) if not is_stray(p)]
        for src in files:
            shutil.move(src, out / sub / f"{_case_name(src)}{suffix}.nii.gz")
        counts[sub] = len(files)
    if counts["imagesTr"] != counts["labelsTr"]:
        raise DataError(
            f"{root.name}: {counts['imagesTr']} training images but {counts['labelsTr']} labels"
        )
    labels = {name: int(value) for value, name in meta["labels"].items()}
    dataset = {
        "name": meta.get("name", root.name),
        "description": meta.get("description", ""),
        "channel_names": {"0": next(iter(modality.values()))},
        "labels": dict(sorted(labels.items(), key=lambda kv: kv[1])),
        "numTraining": counts["labelsTr"],
        "file_ending": ".nii.gz",
        "licence": meta.get("licence", ""),
        "reference": meta.get("reference", ""),
        "release": meta.get("release", ""),
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
