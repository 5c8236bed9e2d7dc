"""A name -> class registry, so components are built by name instead of if/else chains."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from mtlseg.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to constructors; unknown names raise a ConfigError listing the valid ones.

    ``needs_config``: every member is a class with a dataclass ``Config`` (its params, which
    recipes set and the config coercion validates); registering one without is an error."""

    def __init__(self, kind: str, needs_config: bool = False) -> None:
        self.kind = kind
        self.needs_config = needs_config
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if self.needs_config:
                check_config_class(self.kind, name, getattr(obj, "Config", None))
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())

    def __contains__(self, name: str) -> bool:
        return name in self._entries


def check_config_class(kind: str, name: str, config: object) -> None:
    """A registered component's params must be a dataclass (``@dataclass class Params``)."""
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise TypeError(
            f"{kind} {name!r}: its Config must be a @dataclass of its params (an empty one "
            f"when it has none), got {config!r}"
        )


def import_submodules(package: str) -> None:
    """Import every module of ``package``: each one's ``@register`` decorators run, so a new
    component is one new file, found without editing any list of names."""
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__):
        importlib.import_module(f"{package}.{info.name}")
