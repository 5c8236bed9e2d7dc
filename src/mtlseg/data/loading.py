"""Load cases into memory as validated, normalised slices with their metadata.

All problems of a dataset are collected (one line per file) so that ``mtlseg check-data``
can list every one, and training refuses to start with the same list.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtlseg.config import DataConfig
from mtlseg.data.io import check_finite, read_volume
from mtlseg.data.metadata import CaseMeta, case_meta
from mtlseg.data.sources import CaseRecord, DatasetIndex
from mtlseg.errors import DataError
from mtlseg.registry import Registry

MAX_INFERRED_CLASSES = 32

# a normalisation maps a (Z, H, W, C) case to per-channel (offset, scale): x -> (x - offset) / scale
NORMALIZATIONS: Registry = Registry("normalization")


@NORMALIZATIONS.register("zscore")
def zscore(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel z-score over the whole case: offset = mean, scale = std."""
    x = torch.from_numpy(np.ascontiguousarray(image)).reshape(-1, image.shape[-1]).double()
    std, mean = torch.std_mean(x, dim=0, correction=0)
    return mean.numpy(), np.maximum(std.numpy(), 1e-8)


@NORMALIZATIONS.register("minmax")
def minmax(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel min-max to [0, 1] over the whole case: offset = min, scale = max - min."""
    axes = tuple(range(image.ndim - 1))
    low, high = image.min(axis=axes).astype(np.float64), image.max(axis=axes).astype(np.float64)
    return low, np.maximum(high - low, 1e-8)


def normalise(image: np.ndarray, method: str) -> np.ndarray:
    """(Z, H, W, C) -> the same, float32, with ``method``'s per-channel (offset, scale)."""
    offset, scale = NORMALIZATIONS.get(method)(image)
    return ((image.astype(np.float32) - offset.astype(np.float32)) / scale).astype(np.float32)


@dataclass
class RawCase:
    """A case as read from disk, before mask decoding and normalisation."""

    record: CaseRecord
    image: np.ndarray  # (Z, H, W, C)
    label: np.ndarray | None  # (Z, H, W), integer; None: not read (the unlabelled pool)
    affine: np.ndarray | None
    dense: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (Z, H, W, C)


@dataclass
class LoadedCase:
    """A validated case: normalised image and integer class labels."""

    case_id: str
    image: np.ndarray  # (Z, H, W, C) float16, normalised
    label: np.ndarray | None  # (Z, H, W) int64 in [0, num_classes); None: unlabelled pool
    affine: np.ndarray | None
    image_file: str
    meta: CaseMeta
    dense: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (Z, H, W, C) float32

    @property
    def channels(self) -> dict[str, int]:
        """Channels of each dense array."""
        return {k: v.shape[-1] for k, v in self.dense.items()}


@dataclass
class LoadedDataset:
    cases: list[LoadedCase]
    class_names: list[str]
    in_channels: int
    is_volume: bool


def read_case(record: CaseRecord, with_label: bool = True) -> RawCase:
    """Read and stack the channel files of a case and (``with_label`` and the case has one)
    its label; check sizes and finiteness. The label of a case without it is never read."""
    parts: list[np.ndarray] = []
    affine = None
    for path in record.image_files:
        array, affine_i = read_volume(path)
        check_finite(array, path)
        if parts and array.shape[:3] != parts[0].shape[:3]:
            raise DataError(
                f"{path}: size {array.shape[:3]} differs from channel 0 {parts[0].shape[:3]}"
            )
        parts.append(array)
        affine = affine if affine is not None else affine_i
    image = np.concatenate(parts, axis=-1)
    dense = _read_dense(record, image)
    if not with_label or record.label_file is None:
        return RawCase(record, image, None, affine, dense)
    label, _ = read_volume(record.label_file)
    if label.shape[:3] != image.shape[:3]:
        raise DataError(
            f"{record.label_file}: mask size {_size(label)} differs from image size {_size(image)} "
            f"({record.image_files[0].name})"
        )
    if np.issubdtype(label.dtype, np.floating):
        check_finite(label, record.label_file)
        if not np.all(label == np.round(label)):
            raise DataError(f"{record.label_file}: mask has non-integer values")
    channels = label.shape[-1]
    if channels > 1 and not np.all(label == label[..., :1]):
        label = label.max(axis=-1, keepdims=True)  # colour-coded binary masks: any channel on
    return RawCase(record, image, label[..., 0].astype(np.int64), affine, dense)


def _read_dense(record: CaseRecord, image: np.ndarray) -> dict[str, np.ndarray]:
    """The case's dense target arrays, checked against the image's size."""
    dense = {}
    for name, path in record.dense_files.items():
        array, _ = read_volume(path)
        check_finite(array, path)
        if array.shape[:3] != image.shape[:3]:
            raise DataError(
                f"{path}: {name} array size {_size(array)} differs from image size {_size(image)} "
                f"({record.image_files[0].name})"
            )
        dense[name] = array.astype(np.float32)
    return dense


def _size(array: np.ndarray) -> str:
    z, h, w = array.shape[:3]
    return f"{h}x{w}" if z == 1 else f"{z}x{h}x{w}"


class MaskDecoder:
    """Turns raw mask values into class indices: binary threshold or label indices.

    ``auto`` picks binary for lossy (JPEG) masks and for masks whose values are all in
    {0, 255}; otherwise values are label indices. A dataset is never read as 256 classes:
    too many distinct values is an error that suggests binary mode.
    """

    def __init__(
        self, index: DatasetIndex, cfg: DataConfig, raw_labels: dict[str, np.ndarray]
    ) -> None:
        self.index, self.cfg = index, cfg
        self.values: np.ndarray | None = None  # raw value of each class, where not 0..K-1
        self.allowed: set[int] | None = None  # the label values a mask may hold (None: any)
        if index.label_values is not None:  # the format decides (nnU-Net: dataset.json)
            self.mode, self.allowed = "labels", set(index.label_values)
            self.class_names = list(index.class_names or [])
            if index.label_values != list(range(len(index.label_values))):
                self.values = np.asarray(index.label_values)
            return
        self.mode = cfg.mask_mode
        if self.mode == "auto":
            values = set().union(*(np.unique(v).tolist() for v in raw_labels.values()))
            binary_like = values <= {0, 255}
            self.mode = "binary" if index.lossy_masks or binary_like else "labels"
        if self.mode == "binary":
            self.class_names, self.allowed = ["background", "foreground"], None
            return
        if self.mode != "labels":
            raise DataError(f"data.mask_mode: expected auto, binary or labels, got {self.mode!r}")
        n = cfg.num_classes
        if n is None:
            n = 1 + max(int(v.max()) for v in raw_labels.values())
            if n > MAX_INFERRED_CLASSES:
                raise DataError(
                    f"{index.root}: masks hold values up to {n - 1}, which looks like intensities, "
                    "not class indices; set data.mask_mode=binary (threshold data.mask_threshold) "
                    "or data.num_classes"
                )
        self.class_names = ["background"] + [f"class{i}" for i in range(1, max(n, 2))]
        self.allowed = set(range(len(self.class_names)))

    def decode(self, raw: np.ndarray, path: Path | str) -> np.ndarray:
        if self.mode == "binary":
            return (raw > self.cfg.mask_threshold).astype(np.int64)
        present = set(np.unique(raw).tolist())
        allowed = self.allowed if self.allowed is not None else present
        bad = sorted(present - allowed)
        if bad:
            raise DataError(
                f"{path}: label value(s) {bad[:5]} not in the dataset's labels {sorted(allowed)}"
            )
        if self.values is not None:  # e.g. NYUv2: -1..12 -> classes 0..13
            return np.searchsorted(self.values, raw).astype(np.int64)
        return raw


def load_dataset(
    index: DatasetIndex,
    cfg: DataConfig,
    case_ids: list[str] | None = None,
    unlabelled: set[str] | frozenset[str] = frozenset(),
    extra: list[CaseRecord] | None = None,
) -> tuple[LoadedDataset | None, list[str]]:
    """Read, validate and normalise cases. Returns (dataset or None, list of problems).

    The masks of the cases in ``unlabelled`` (and of cases without a mask file) are never
    read: they load as images alone (``label`` None). ``extra``: more records (images of
    ``data.unlabelled_dirs``), loaded the same way."""
    problems: list[str] = []
    wanted = set(case_ids) if case_ids is not None else None
    raws: list[RawCase] = []
    for record in [*index.cases, *(extra or [])]:
        if wanted is not None and record.case_id not in wanted:
            continue
        try:
            raws.append(read_case(record, with_label=record.case_id not in unlabelled))
        except DataError as err:
            problems.extend(str(err).splitlines())
    if not raws:
        return None, problems or [f"{index.root}: no readable cases"]
    try:
        labels = {r.record.case_id: r.label for r in raws if r.label is not None}
        decoder = MaskDecoder(index, cfg, labels)
        NORMALIZATIONS.get(cfg.normalization)  # an unknown name fails here, once
    except Exception as err:
        return None, problems + [str(err)]
    channels = raws[0].image.shape[-1]
    expected = cfg.channels if cfg.channels is not None else channels
    cases: list[LoadedCase] = []
    pending: list[RawCase | None] = list(raws)
    raws.clear()
    for i, raw in enumerate(pending):
        assert raw is not None
        pending[i] = None  # release each raw array once it is converted
        first = raw.record.image_files[0]
        if raw.image.shape[-1] != expected:
            why = "the recipe expects" if cfg.channels is not None else "the first case has"
            problems.append(
                f"{first}: {raw.image.shape[-1]} channel(s), {why} {expected} (data.channels)"
            )
            continue
        try:
            label = None
            if raw.label is not None and raw.record.label_file is not None:
                label = decoder.decode(raw.label, raw.record.label_file)
        except DataError as err:
            problems.append(str(err))
            continue
        # normalised in float32, kept in float16: the slices are resized from it once
        image = normalise(raw.image, cfg.normalization).astype(np.float16)
        meta = case_meta(raw.record.case_id, image.shape, raw.affine, cfg.case_pattern)
        dense_channels = {k: v.shape[-1] for k, v in raw.dense.items()}
        if cases and dense_channels != cases[0].channels:
            problems.append(
                f"{first}: dense array channels {dense_channels} differ from the first case's "
                f"{cases[0].channels}"
            )
            continue
        cases.append(
            LoadedCase(raw.record.case_id, image, label, raw.affine, str(first), meta, raw.dense)
        )
    if problems:
        return None, problems
    is_volume = any(c.image.shape[0] > 1 for c in cases)
    return LoadedDataset(cases, decoder.class_names, expected, is_volume), problems


def load_dataset_or_raise(
    index: DatasetIndex,
    cfg: DataConfig,
    case_ids: list[str] | None = None,
    unlabelled: set[str] | frozenset[str] = frozenset(),
    extra: list[CaseRecord] | None = None,
) -> LoadedDataset:
    dataset, problems = load_dataset(index, cfg, case_ids, unlabelled, extra)
    if problems or dataset is None:
        shown = problems[:20] + (
            [f"... and {len(problems) - 20} more"] if len(problems) > 20 else []
        )
        raise DataError("\n".join(shown))
    return dataset
