"""The check of what a recipe's tasks, terms and FiLM need (``Requirements`` records) of the
data: one clear error naming who needs what (what the configuration alone cannot give fails
at load, ``mtlseg.settings``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mtlseg.config import RunConfig
from mtlseg.data.dataset import SliceDataset
from mtlseg.data.volumes import VolumeDataset
from mtlseg.errors import ConfigError, DataError
from mtlseg.settings import requirements

if TYPE_CHECKING:
    from mtlseg.engine.data import PreparedData

log = logging.getLogger(__name__)


# what a component that uses the pool does without one: (Requirements flag, (what it does,
# what happens instead)), one warning each
NO_POOL_WARNINGS = (
    (
        "mixes_pool",
        (
            "mix(es) labelled images with the unlabelled pool's",
            "training is labelled-only, the mixing on labelled images alone",
        ),
    ),
    (
        "wants_pool",
        (
            "would learn from the unlabelled pool too",
            "it learns from the labelled images alone",
        ),
    ),
    (
        "unlabelled_only",
        ("learn(s) from the unlabelled pool only", "training is labelled-only"),
    ),
)


def check_requirements(cfg: RunConfig, data: PreparedData) -> None:
    """Raise ``DataError`` for what the data lacks that the recipe's tasks, terms and FiLM
    need (a labels column or its classes, a dense array, metadata fields), naming the file,
    the task and the way out; warn where a pool is wanted and there is none. What the
    configuration alone cannot give (2D/3D, pair batches) failed at load
    (``mtlseg.settings.check_needs``)."""
    needs = requirements(cfg)
    if not data.split.get("unlabelled"):
        for flag, what in NO_POOL_WARNINGS:
            names = [who for who, (_, req) in needs.items() if getattr(req, flag)]
            if names:
                log.warning(
                    "%s %s, and there is none (data.label_budget, data.unlabelled_dirs): %s",
                    ", ".join(names),
                    *what,
                )
    ann = data.annotations
    cases = [*data.split["train"], *data.split["val"]]
    dense = data.dataset.cases[0].dense
    for who, (kind, req) in needs.items():
        if req.labels is not None:
            try:
                ann.require(req.labels, cases, who, list(req.classes) if req.classes else None)
            except DataError as err:
                raise DataError(
                    f"{err}\nto train this recipe without it: --set {who}.enabled=false"
                ) from None
        if req.dense is not None and req.dense not in dense:
            raise DataError(
                f"{data.index.root}: {who} ({kind}) reads dense {req.dense!r} arrays, the dataset has "
                f"{', '.join(map(repr, dense)) or 'none'} (the nyuv2 format carries depth and "
                "normal arrays)"
            )
        if req.meta:
            _slices(data.train).require(list(req.meta), who, f"{data.index.root} (train split)")
    film = cfg.model.film
    if film is not None and film.missing == "error":  # conditioning needs them at inference too
        fields = list(film.fields)
        _slices(data.train).require(fields, "model.film", f"{data.index.root} (train split)")
        _slices(data.val).require(fields, "model.film", f"{data.index.root} (val split)")


def _slices(dataset: SliceDataset | VolumeDataset) -> SliceDataset:
    """Metadata fields are per slice: a task or FiLM reading them trains on 2D slices."""
    if not isinstance(dataset, SliceDataset):
        raise ConfigError("slice metadata (a task's or FiLM's fields) needs data.dims=2")
    return dataset


def unlabelled_batch_size(cfg: RunConfig, pool_size: int) -> int:
    """``train.unlabelled_batch_size``, or by default the batch size when there is a pool and
    some task or term learns without annotation (else 0: the pool would teach nothing)."""
    if cfg.train.unlabelled_batch_size is not None:
        return cfg.train.unlabelled_batch_size
    useful = any(req.reads_whole_batch for _, req in requirements(cfg).values())
    return cfg.train.batch_size if pool_size > 0 and useful else 0
