"""The run configuration as every command reads it: a recipe and its overrides, parsed
(``mtlseg.config``), then resolved against the registries: each component's ``params``
become its ``Config`` dataclass and every registry name is checked, so a typo fails here,
naming the key and the valid ones, before any data is read.

This module sits above the registries (models, tasks, terms, weightings, data) and below
the engine; ``mtlseg.config`` below them all imports none of them."""

from __future__ import annotations

from typing import Any

from mtlseg.config import RunConfig, parse_config, typed
from mtlseg.data.resample import LABEL_RESIZE
from mtlseg.data.transforms import AUGMENTATIONS
from mtlseg.errors import ConfigError
from mtlseg.models.inputs import INPUTS
from mtlseg.models.registry import BACKBONES
from mtlseg.tasks import TASKS
from mtlseg.tasks.base import Requirements
from mtlseg.terms import TERMS
from mtlseg.weighting import WEIGHTINGS


def load_config(
    recipe: str | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Recipe (a shipped name, a YAML path or a mapping) + ``--set`` overrides (then
    ``$MTLSEG_SET``'s) -> a RunConfig with every name checked and every ``params`` typed."""
    return resolve(parse_config(recipe, overrides))


def resolve(cfg: RunConfig, check: bool = True) -> RunConfig:
    """``cfg`` (changed in place, and returned) with its registry names checked and each
    component's ``params`` its ``Config`` dataclass (already typed ones are kept); with
    ``check``, what its tasks need of the configuration too (``check_needs``: a saved
    configuration, checked when it was loaded, is not checked again)."""
    if cfg.data.label_resize not in LABEL_RESIZE:
        raise ConfigError(
            f"data.label_resize: unknown rule {cfg.data.label_resize!r}; "
            f"valid: {', '.join(LABEL_RESIZE.names())}"
        )
    if str(cfg.data.augment) not in AUGMENTATIONS:  # a string once parsed
        raise ConfigError(
            f"data.augment: unknown augmentation {cfg.data.augment!r}; "
            f"valid: {', '.join(AUGMENTATIONS.names())} (or true/false)"
        )
    INPUTS.get(cfg.model.input)  # unknown names: a ConfigError listing the valid ones
    config_cls = BACKBONES.get(cfg.model.backbone)[1]
    cfg.model.params = typed(config_cls, cfg.model.params, "model.params")
    for task in cfg.tasks:
        task.params = typed(TASKS.get(task.kind).Config, task.params, f"tasks.{task.name}.params")
    for term in cfg.terms:
        term.params = typed(TERMS.get(term.kind).Config, term.params, f"terms.{term.name}.params")
    weighting = WEIGHTINGS.get(cfg.weighting.kind).Config
    cfg.weighting.params = typed(weighting, cfg.weighting.params, "weighting.params")
    if check:
        check_needs(cfg)
    return cfg


PAIR_SAMPLERS = ("pairs", "patient-pairs")


def requirements(cfg: RunConfig) -> dict[str, tuple[str, Requirements]]:
    """``{"tasks.<name>" | "terms.<name>": (kind, its record)}`` for every enabled task and
    term (their params typed by ``resolve``)."""
    out = {}
    for key, registry, items in (("tasks", TASKS, cfg.tasks), ("terms", TERMS, cfg.terms)):
        for item in items:
            cls = registry.get(item.kind)
            params = typed(cls.Config, item.params, f"{key}.{item.name}.params")
            out[f"{key}.{item.name}"] = (item.kind, cls.requirements(params))
    return out


def check_needs(cfg: RunConfig) -> None:
    """What the configuration cannot give its tasks and terms (2D/3D data, the network's
    input, pair batches): a ``ConfigError`` naming who needs what and the way out. What the
    data lacks is checked when it is read (``mtlseg.engine.requirements``)."""
    for who, (kind, req) in requirements(cfg).items():
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
