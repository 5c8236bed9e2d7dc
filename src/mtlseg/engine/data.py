"""From a DataConfig to train/val slice datasets and loaders, with the split recorded."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from mtlseg.config import DataConfig, patch_size
from mtlseg.data.annotations import Annotations, load_annotations
from mtlseg.data.dataset import SliceDataset
from mtlseg.data.loading import LoadedDataset, load_dataset_or_raise
from mtlseg.data.samplers import AdjacentPairBatchSampler
from mtlseg.data.sources import DatasetIndex, discover
from mtlseg.data.splits import resolve_split, validate_split, write_split
from mtlseg.data.transforms import build_augmentation
from mtlseg.data.volumes import VolumeDataset
from mtlseg.distributed import rank_and_world
from mtlseg.errors import DataError
from mtlseg.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    index: DatasetIndex
    dataset: LoadedDataset
    split: dict[str, list[str]]
    split_source: str
    train: SliceDataset | VolumeDataset
    val: SliceDataset | VolumeDataset
    case_ids: list[str]  # val case index -> case id, for per-volume metrics
    annotations: Annotations = field(default_factory=Annotations)

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names


def prepare_data(cfg: DataConfig, split: dict[str, list[str]] | None = None) -> PreparedData:
    """Discover, load and validate the dataset, then split it by case (or use ``split``)."""
    index = discover(cfg.path, cfg.format)
    dataset = load_dataset_or_raise(index, cfg)
    patients = {c.case_id: c.meta.patient_id for c in dataset.cases}
    if split is None:
        split, source = resolve_split(index.root, patients, cfg, index.split)
    else:
        source = "given"
        validate_split(split, list(patients), "recorded split", allow_unlisted=True)
    by_id = {c.case_id: c for c in dataset.cases}
    train_cases = [by_id[c] for c in split["train"]]
    val_cases = [by_id[c] for c in split["val"]]
    ann = load_annotations(
        index.root, cfg.labels, cfg.boxes, [c.case_id for c in dataset.cases], dataset.is_volume
    )
    train: SliceDataset | VolumeDataset
    val: SliceDataset | VolumeDataset
    if cfg.dims == 3:
        if not dataset.is_volume:
            raise DataError(
                f"{index.root}: data.dims=3 trains on volumes, this dataset holds 2D images"
            )
        patch = patch_size(cfg)
        train = VolumeDataset(train_cases, cfg.image_size, patch, cfg.augment != "none", ann)
        val = VolumeDataset(val_cases, cfg.image_size, annotations=ann)
    else:
        augment = build_augmentation(str(cfg.augment), index.dense_kinds)
        train = SliceDataset(train_cases, cfg.image_size, augment, ann)
        val = SliceDataset(val_cases, cfg.image_size, annotations=ann)
    for name, ds in (("train", train), ("val", val)):
        if len(ds) == 0:
            raise DataError(f"{index.root}: split {name!r} has no samples")
    log.info("data %s: %d train / %d val samples (%s)", index.root, len(train), len(val), source)
    return PreparedData(
        index, dataset, split, source, train, val, [c.case_id for c in val_cases], ann
    )


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch): the order of a resumed epoch is reproducible."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by Lightning at every epoch start
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ResumableBatches(Sampler[list[int]]):
    """The batches of ``inner``, shared out between DDP processes, resumable mid-epoch.

    Under DDP (``torch.distributed`` initialised) process r of W takes batches r, r + W,
    ... of the one (seed, epoch) order every process draws alike: distinct batches, W x
    ``batch_size`` samples per optimiser step, an epoch cut to a multiple of W so that no
    process waits. ``skip_next(k)`` leaves this process's first k batches out of the next
    pass (indices only: nothing is read). Lightning restarts an interrupted epoch's
    iteration from its start, so a run resumed mid-epoch skips the batches it had trained
    on and sees exactly the rest of the epoch, as an uninterrupted run does."""

    def __init__(self, inner: Any) -> None:  # a batch sampler with __len__ (and set_epoch)
        self.inner, self._skip = inner, 0

    def skip_next(self, batches: int) -> None:
        self._skip = batches

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it before every epoch
        for s in (self.inner, getattr(self.inner, "sampler", None)):
            set_epoch = getattr(s, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

    @staticmethod
    def _world() -> tuple[int, int]:
        return rank_and_world()

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        rank, world = self._world()
        mine = (b for i, b in enumerate(self.inner) if i % world == rank and i < len(self) * world)
        for i, batch in enumerate(mine):
            if i >= skip:
                yield batch

    def __len__(self) -> int:
        # the whole epoch of this process: Lightning counts the skipped batches as done
        return len(self.inner) // self._world()[1]


def _loader(dataset: Any, batches: Sampler[list[int]], num_workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=ResumableBatches(batches),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


SAMPLERS: Registry = Registry("train.sampler")


@SAMPLERS.register("shuffle")
def shuffle_loader(data: PreparedData, batch_size: int, seed: int, num_workers: int) -> DataLoader:
    """Every slice once per epoch in a (seed, epoch) order."""
    n = len(data.train)
    batches = BatchSampler(
        EpochShuffleSampler(n, seed), min(batch_size, n), drop_last=n >= 2 * batch_size
    )
    return _loader(data.train, batches, num_workers)


def _pair_loader(single_patient: bool) -> Callable[..., DataLoader]:
    def loader(data: PreparedData, batch_size: int, seed: int, num_workers: int) -> DataLoader:
        sampler = AdjacentPairBatchSampler(data.train.meta, batch_size, seed, single_patient)
        return _loader(data.train, sampler, num_workers)

    loader.__doc__ = "Adjacent-slice pairs" + (", one patient per batch" if single_patient else "")
    return loader


SAMPLERS.register("pairs")(_pair_loader(single_patient=False))
SAMPLERS.register("patient-pairs")(_pair_loader(single_patient=True))


def train_loader(
    data: PreparedData, batch_size: int, seed: int, num_workers: int, sampler: str = "shuffle"
) -> DataLoader:
    return SAMPLERS.get(sampler)(data, batch_size, seed, num_workers)


def val_loader(data: PreparedData, batch_size: int, num_workers: int) -> DataLoader:
    """Validation batches; whole volumes (3D) one at a time, as their depths differ."""
    if isinstance(data.val, VolumeDataset):
        batch_size = 1
    return DataLoader(data.val, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def write_split_file(data: PreparedData, path: Path) -> None:
    write_split(data.split, path, data.split_source)
