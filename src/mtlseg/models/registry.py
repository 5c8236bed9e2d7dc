"""Backbone registry: ``@register_backbone(name, ConfigClass)`` and ``build_backbone``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mtlseg.config import typed
from mtlseg.errors import ConfigError
from mtlseg.registry import Registry, check_config_class

BACKBONES: Registry[tuple[type, type]] = Registry("backbone")


# the params of a small instance of each backbone, declared where it is registered: contract
# tests (tests/test_contracts.py) build every registered backbone from them
TINY_PARAMS: dict[str, dict[str, Any]] = {}


def register_backbone(
    name: str, config_cls: type, tiny: dict[str, Any] | None = None
) -> Callable[[type], type]:
    """Register a backbone class under ``name`` with its params dataclass and the params of
    a small instance (``tiny``: a few channels, for tests and quick checks)."""

    def decorator(cls: type) -> type:
        check_config_class("backbone", name, config_cls)
        BACKBONES.register(name)((cls, config_cls))
        TINY_PARAMS[name] = dict(tiny or {})
        return cls

    return decorator


def build_backbone(
    name: str,
    params: dict[str, Any],
    in_channels: int,
    num_classes: int,
    task_names: list[str] | None = None,
) -> Any:  # a Backbone
    """``task_names`` reach backbones with one branch per task (``per_task``, e.g. MTAN)."""
    cls, config_cls = BACKBONES.get(name)
    try:
        cfg = typed(config_cls, params, "model.params")
        if getattr(cls, "per_task", False):
            backbone = cls(in_channels, num_classes, cfg, list(task_names or []))
        else:
            backbone = cls(in_channels, num_classes, cfg)
    except ValueError as err:  # a backbone's own check of its parameters
        raise ConfigError(f"model.params: {err}") from None
    backbone.check_contract()
    return backbone
