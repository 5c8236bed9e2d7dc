"""The loss-term contract and registry (``terms:`` in a recipe).

A term has no label of its own: it reads the model's outputs of the tasks it names and
returns a scalar that the weighting combines with the task losses, under the term's name
and weight. Each term says which branches its gradient reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mtlseg.config import TermConfig, build_dataclass
from mtlseg.errors import ConfigError
from mtlseg.registry import Registry
from mtlseg.tasks.base import Requirements, Task

Forward = Callable[[torch.Tensor, "torch.Tensor | None"], dict[str, torch.Tensor]]


@dataclass
class TermContext:
    """What a term may use besides the outputs and the batch: the training step and the run's
    progress in [0, 1] (ramp-ups), the student's forward (for inputs of the term's own, e.g.
    mixed images) and the EMA teacher's (no gradient; None unless some term asks for one)."""

    step: int = 0
    progress: float = 0.0
    student: Forward | None = None
    teacher: Forward | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Term:
    """Base class: ``Config`` (a dataclass of params), ``__call__(outputs, batch, ctx) ->
    scalar``. ``teacher_decay`` (None: no teacher) asks the model for an EMA teacher."""

    Config: type = object
    requires: Requirements = Requirements()  # a term reads outputs: masks only if it says so
    likelihood: str = "classification"  # the form uncertainty weighting gives it
    # kinds of the tasks its default params name (each task named as its kind): an example
    # recipe for the contract tests
    example_tasks: tuple[str, ...] = ()

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        return cls.requires

    def __init__(self, cfg: TermConfig, tasks: dict[str, Task]) -> None:
        self.name: str = cfg.name or cfg.kind
        self.kind, self.weight = cfg.kind, cfg.weight
        self.params = build_dataclass(self.Config, cfg.params, f"terms.{self.name}.params")
        self.tasks = tasks
        self.needs = self.requirements(self.params)

    def task(self, name: str, kinds: tuple[str, ...]) -> Task:
        """The recipe's task ``name``, checked to be of one of ``kinds``."""
        task = self.tasks.get(name)
        if task is None:
            raise ConfigError(
                f"terms.{self.name}: no task named {name!r}; tasks: {', '.join(self.tasks)}"
            )
        if task.kind not in kinds:
            raise ConfigError(
                f"terms.{self.name}: task {name!r} is a {task.kind} task, expected "
                f"{' or '.join(kinds)}"
            )
        return task

    @property
    def teacher_decay(self) -> float | None:
        """The EMA decay of the teacher this term reads (None: it needs none)."""
        return None

    def __call__(
        self, outputs: dict[str, Any], batch: dict[str, Any], ctx: TermContext
    ) -> torch.Tensor:
        raise NotImplementedError


TERMS: Registry[type[Term]] = Registry("term", needs_config=True)


def build_terms(cfgs: list[TermConfig], tasks: list[Task]) -> list[Term]:
    by_name = {t.name: t for t in tasks}
    return [TERMS.get(c.kind)(c, by_name) for c in cfgs]
