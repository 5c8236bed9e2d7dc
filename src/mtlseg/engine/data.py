"""From a DataConfig to train/val slice datasets and loaders, with the split recorded."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from mtlseg.config import DataConfig
from mtlseg.data.annotations import Annotations, load_annotations
from mtlseg.data.budgets import resolve_label_budget
from mtlseg.data.dataset import SliceDataset
from mtlseg.data.loading import LoadedDataset, load_dataset_or_raise
from mtlseg.data.metadata import parse_case_id
from mtlseg.data.samplers import AdjacentPairBatchSampler
from mtlseg.data.sources import DatasetIndex, discover, discover_unlabelled
from mtlseg.data.splits import resolve_split, validate_split, write_split
from mtlseg.data.volumes import VolumeDataset
from mtlseg.distributed import rank_and_world
from mtlseg.engine.spatial import spatial_mode
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
    label_source: str = "all training cases"  # where the label budget came from

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names


def prepare_data(cfg: DataConfig, split: dict[str, list[str]] | None = None) -> PreparedData:
    """Discover the dataset, split it by case or patient (or use ``split``), apply the label
    budget, then load and validate it: the masks of the unlabelled pool (cases the budget
    leaves out, images without a mask, ``data.unlabelled_dirs``) are never read.

    ``split["train"]`` holds the labelled training cases, ``split["unlabelled"]`` the pool
    (recorded with their sources in the run's splits.json)."""
    index = discover(cfg.path, cfg.format)
    unmasked: set[str] = {r.case_id for r in index.cases if r.label_file is None}
    masked = [r.case_id for r in index.cases if r.label_file is not None]
    patients = {r.case_id: parse_case_id(r.case_id, cfg.case_pattern)[0] for r in index.cases}
    if split is None:
        split, source = resolve_split(
            index.root, {c: patients[c] for c in masked}, cfg, index.split
        )
        labelled, left_out, budget_source = resolve_label_budget(
            index.root, split["train"], patients, cfg.label_budget, cfg.split_mode, cfg.label_seed
        )
        # images without a mask join the pool, unless their patient is a val patient
        val_patients = {patients[c] for c in split["val"]} if cfg.split_mode != "case" else set()
        free = {c for c in unmasked if patients[c] not in val_patients}
        split = {**split, "train": labelled, "unlabelled": sorted(set(left_out) | free)}
    else:
        source, budget_source = "given", "given"
        split = {**split, "unlabelled": list(split.get("unlabelled", []))}
    in_val = sorted(unmasked & set(split["val"]))
    if in_val:
        raise DataError(f"{index.root}: val case(s) without a mask: {in_val[:5]}")
    validate_split(  # the pool is used: its cases are not "in no split"
        {"train": [*split["train"], *split["unlabelled"]], "val": split["val"]},
        [*masked, *unmasked],
        "recorded split" if source == "given" else source,
        allow_unlisted=True,
    )
    extra = discover_unlabelled(cfg.unlabelled_dirs, {r.case_id for r in index.cases})
    split["unlabelled"] = sorted({*split["unlabelled"], *(r.case_id for r in extra)})
    pool: set[str] = set(split["unlabelled"])
    mode = spatial_mode(cfg.dims)
    mode.check_pool(pool)
    wanted = [*split["train"], *split["unlabelled"], *split["val"]]
    dataset = load_dataset_or_raise(index, cfg, wanted, pool, extra)
    by_id = {c.case_id: c for c in dataset.cases}
    train_cases = [by_id[c] for c in [*split["train"], *split["unlabelled"]]]
    val_cases = [by_id[c] for c in split["val"]]
    ann = load_annotations(
        index.root, cfg.labels, cfg.boxes, [c.case_id for c in dataset.cases], dataset.is_volume
    )
    train, val = mode.datasets(
        cfg, index.root, dataset, train_cases, val_cases, ann, index.dense_kinds
    )
    for name, ds in (("train", train), ("val", val)):
        if len(ds) == 0:
            raise DataError(f"{index.root}: split {name!r} has no samples")
    pool_samples = len(train.indices(labelled=False)) if isinstance(train, SliceDataset) else 0
    log.info(
        "data %s: %d labelled train samples, %d of the pool (%d case(s); labelled: %s) / "
        "%d val samples (%s)",
        index.root,
        len(train) - pool_samples,
        pool_samples,
        len(pool),
        budget_source,
        len(val),
        source,
    )
    return PreparedData(
        index,
        dataset,
        split,
        source,
        train,
        val,
        [c.case_id for c in val_cases],
        ann,
        budget_source,
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


class TwoStreamBatches(Sampler[list[int]]):
    """Batches of the labelled samples from ``labelled`` (a batch sampler over positions in
    ``labelled_index``), each followed by ``unlabelled_size`` samples of the pool.

    The pool is read as one endless seeded sequence (a fresh permutation of the pool per
    pass over it), at the batch's global position ``epoch x batches per epoch + i``: it does
    not restart with each (short) labelled epoch, and a resumed or sharded run (DDP takes
    every W-th batch) draws exactly the same pool images with no state of its own."""

    def __init__(
        self,
        labelled: Any,
        labelled_index: list[int],
        pool_index: list[int],
        unlabelled_size: int,
        seed: int,
    ) -> None:
        self.labelled, self.labelled_index = labelled, labelled_index
        self.pool_index, self.unlabelled_size = pool_index, unlabelled_size
        self.seed, self.epoch = seed, 0
        self._perm: tuple[int, list[int]] = (-1, [])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        set_epoch = getattr(self.labelled, "set_epoch", None) or getattr(
            getattr(self.labelled, "sampler", None), "set_epoch", None
        )
        if callable(set_epoch):
            set_epoch(epoch)

    def _pool_at(self, position: int) -> int:
        """The pool sample at ``position`` of the endless sequence."""
        n = len(self.pool_index)
        lap, offset = divmod(position, n)
        if self._perm[0] != lap:
            g = torch.Generator().manual_seed(self.seed * 7_919 + 1_000_003 + lap)
            self._perm = (lap, torch.randperm(n, generator=g).tolist())
        return self.pool_index[self._perm[1][offset]]

    def __iter__(self) -> Iterator[list[int]]:
        per_epoch = len(self.labelled)
        for i, batch in enumerate(self.labelled):
            start = (self.epoch * per_epoch + i) * self.unlabelled_size
            pool = [self._pool_at(start + k) for k in range(self.unlabelled_size)]
            yield [self.labelled_index[j] for j in batch] + pool

    def __len__(self) -> int:
        return len(self.labelled)


def _labelled_and_pool(data: PreparedData) -> tuple[list[int], list[int]]:
    train = data.train
    if isinstance(train, SliceDataset):
        return train.indices(labelled=True), train.indices(labelled=False)
    return list(range(len(train))), []


def _with_pool(data: PreparedData, labelled: Any, unlabelled: int, seed: int) -> Any:
    """``labelled`` (a batch sampler over labelled positions) with the pool's stream when
    ``unlabelled`` > 0, else mapped to dataset indices."""
    labelled_index, pool_index = _labelled_and_pool(data)
    if unlabelled > 0 and not pool_index:
        raise DataError("train.unlabelled_batch_size > 0 needs an unlabelled pool (none here)")
    return TwoStreamBatches(labelled, labelled_index, pool_index, unlabelled, seed)


SAMPLERS: Registry = Registry("train.sampler")


@SAMPLERS.register("shuffle")
def shuffle_loader(
    data: PreparedData, batch_size: int, seed: int, num_workers: int, unlabelled: int = 0
) -> DataLoader:
    """Every labelled slice once per epoch in a (seed, epoch) order (and ``unlabelled``
    pool samples with every batch)."""
    n = len(_labelled_and_pool(data)[0])
    batches = BatchSampler(
        EpochShuffleSampler(n, seed), min(batch_size, n), drop_last=n >= 2 * batch_size
    )
    return _loader(data.train, _with_pool(data, batches, unlabelled, seed), num_workers)


def _pair_loader(single_patient: bool) -> Callable[..., DataLoader]:
    def loader(
        data: PreparedData, batch_size: int, seed: int, num_workers: int, unlabelled: int = 0
    ) -> DataLoader:
        labelled_index, _ = _labelled_and_pool(data)
        meta = [data.train.meta[i] for i in labelled_index]
        sampler = AdjacentPairBatchSampler(meta, batch_size, seed, single_patient)
        return _loader(data.train, _with_pool(data, sampler, unlabelled, seed), num_workers)

    loader.__doc__ = "Adjacent-slice pairs" + (", one patient per batch" if single_patient else "")
    return loader


SAMPLERS.register("pairs")(_pair_loader(single_patient=False))
SAMPLERS.register("patient-pairs")(_pair_loader(single_patient=True))


def train_loader(
    data: PreparedData,
    batch_size: int,
    seed: int,
    num_workers: int,
    sampler: str = "shuffle",
    unlabelled: int = 0,
) -> DataLoader:
    """The training batches of ``sampler``: ``batch_size`` labelled samples (and
    ``unlabelled`` of the pool) per batch."""
    return SAMPLERS.get(sampler)(data, batch_size, seed, num_workers, unlabelled)


def val_loader(data: PreparedData, batch_size: int, num_workers: int) -> DataLoader:
    """Validation batches; whole volumes (3D) one at a time, as their depths differ."""
    if isinstance(data.val, VolumeDataset):
        batch_size = 1
    return DataLoader(data.val, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def write_split_file(data: PreparedData, path: Path) -> None:
    write_split(data.split, path, data.split_source, data.label_source)
