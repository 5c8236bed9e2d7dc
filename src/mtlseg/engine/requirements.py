"""The one check of what a recipe's tasks, terms and FiLM need (``Requirements`` records)
against the configuration and, when given, the data: one clear error naming who needs what."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mtlseg.config import RunConfig, typed
from mtlseg.data.dataset import SliceDataset
from mtlseg.data.volumes import VolumeDataset
from mtlseg.errors import ConfigError, DataError
from mtlseg.tasks import TASKS
from mtlseg.tasks.base import Requirements
from mtlseg.terms import TERMS

if TYPE_CHECKING:
    from mtlseg.engine.data import PreparedData

PAIR_SAMPLERS = ("pairs", "patient-pairs")
log = logging.getLogger(__name__)


def requirements(cfg: RunConfig) -> dict[str, tuple[str, Requirements]]:
    """``{"tasks.<name>" | "terms.<name>": (kind, its record)}`` for every enabled task and
    term."""
    out = {}
    for key, registry, items in (("tasks", TASKS, cfg.tasks), ("terms", TERMS, cfg.terms)):
        for item in items:
            cls = registry.get(item.kind)
            params = typed(cls.Config, item.params, f"{key}.{item.name}.params")
            out[f"{key}.{item.name}"] = (item.kind, cls.requirements(params))
    return out


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


def check_requirements(cfg: RunConfig, data: PreparedData | None = None) -> None:
    """Raise ``ConfigError`` for what the configuration cannot give (2D/3D, pair batches),
    and with ``data`` ``DataError`` for what the data lacks (a labels column or its classes,
    a dense array, metadata fields), naming the file, the task and the way out."""
    needs = requirements(cfg)
    for who, (kind, req) in needs.items():
        if cfg.data.dims not in req.dims:
            raise ConfigError(
                f"data.dims={cfg.data.dims}: {who} ({kind}) works on "
                f"{' and '.join(f'{d}D' for d in req.dims)} data only"
            )
        if req.model_input is not None and cfg.model.input != req.model_input:
            raise ConfigError(
                f"{who} ({kind}): the network must see {req.model_input!r}; set model.input: "
                f"{req.model_input} (now {cfg.model.input!r})"
            )
        if req.pairs and cfg.train.sampler not in PAIR_SAMPLERS:
            raise ConfigError(
                f"{who}: needs adjacent-slice pairs in every batch; set train.sampler to one "
                f"of {', '.join(PAIR_SAMPLERS)} (now {cfg.train.sampler!r})"
            )
    if data is None:
        return
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
