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
from mtlseg.terms import TERMS
from mtlseg.weighting import WEIGHTINGS


def load_config(
    recipe: str | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Recipe (a shipped name, a YAML path or a mapping) + ``--set`` overrides (then
    ``$MTLSEG_SET``'s) -> a RunConfig with every name checked and every ``params`` typed."""
    return resolve(parse_config(recipe, overrides))


def resolve(cfg: RunConfig) -> RunConfig:
    """``cfg`` (changed in place, and returned) with its registry names checked and each
    component's ``params`` its ``Config`` dataclass (already typed ones are kept)."""
    if cfg.data.label_resize not in LABEL_RESIZE:
        raise ConfigError(
            f"data.label_resize: unknown rule {cfg.data.label_resize!r}; "
            f"valid: {', '.join(LABEL_RESIZE.names())}"
        )
    if cfg.data.augment not in AUGMENTATIONS:
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
    return cfg
