"""The loss-term contract and registry (``terms:`` in a recipe).

A term has no label of its own: it reads the model's outputs of the tasks it names and
returns a scalar that the weighting combines with the task losses, under the term's name
and weight. Each term says which branches its gradient reaches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from mtlseg.config import TermConfig, typed
from mtlseg.errors import ConfigError
from mtlseg.registry import Registry
from mtlseg.tasks.base import TASKS, Requirements, Task

if TYPE_CHECKING:
    from mtlseg.tasks.segmentation import SegmentationTask

TaskT = TypeVar("TaskT", bound=Task[Any])
P = TypeVar("P")  # a term's params: its Config dataclass

Forward = Callable[[torch.Tensor, "torch.Tensor | None"], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class TeacherSpec:
    """The EMA teacher a term reads: teacher = a * teacher + (1 - a) * student after each
    step, a = ``decay``, or with ``ramp`` a = min(1 - 1 / (n + 1), decay) at the n-th update
    (Tarvainen & Valpola's ramp, as SSL4MIS; BCP keeps a fixed 0.99)."""

    decay: float
    ramp: bool = True


@dataclass
class TermContext:
    """What a term may use besides the outputs and the batch: the training step and the run's
    progress in [0, 1] (ramp-ups), the student's forward (for inputs of the term's own, e.g.
    mixed images), the EMA teacher's (no gradient; None unless some term asks for one) and
    a CPU generator seeded by the run's seed, the step and the process, for the term's
    random draws (noise, boxes): a resumed run draws exactly what the uninterrupted one did."""

    step: int = 0
    progress: float = 0.0
    student: Forward | None = None
    teacher: Forward | None = None
    generator: torch.Generator | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Term(Generic[P]):
    """Base class: ``Config`` (a dataclass of params), ``__call__(outputs, batch, ctx) ->
    scalar``. ``teacher`` (None: no teacher) asks the model for an EMA teacher; ``replaces``
    names the tasks whose own loss the term stands in for while it trains (BCP supervises
    the segmentation on its mixed images only); a term with ``reads_outputs = False`` runs
    the student on inputs of its own (``ctx.student``), so a step whose tasks are all
    replaced skips the forward of the batch."""

    Config: type = object
    # a term reads outputs (masks only if it says so), of 2D or 3D networks
    requires: Requirements = Requirements(dims=(2, 3))
    likelihood: str = "classification"  # the form uncertainty weighting gives it
    reads_outputs: bool = True  # reads the model's outputs of the batch
    # kinds of the tasks its default params name (each task named as its kind): an example
    # recipe for the contract tests
    example_tasks: tuple[str, ...] = ()

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        return cls.requires

    def __init__(
        self, cfg: TermConfig, tasks: dict[str, Task], primary: SegmentationTask | None = None
    ) -> None:
        self.name: str = cfg.name or cfg.kind
        self.kind, self.weight = cfg.kind, cfg.weight
        self.params: P = typed(self.Config, cfg.params, f"terms.{self.name}.params")
        self.tasks = tasks
        self.primary = primary
        self.needs = self.requirements(self.params)

    def task(self, name: str, cls: type[TaskT]) -> TaskT:
        """The recipe's task ``name``, checked to be a ``cls`` (e.g. ``PresenceTask``)."""
        task = self.tasks.get(name)
        if task is None:
            raise ConfigError(
                f"terms.{self.name}: no task named {name!r}; tasks: {', '.join(self.tasks)}"
            )
        if not isinstance(task, cls):
            kinds = [k for k in TASKS.names() if issubclass(TASKS.get(k), cls)]
            raise ConfigError(
                f"terms.{self.name}: task {name!r} is a {task.kind} task, expected "
                f"{' or '.join(kinds)}"
            )
        return task

    def segmentation_task(self, name: str) -> SegmentationTask:
        """The segmentation task ``name``; empty: the recipe's primary task."""
        from mtlseg.tasks.segmentation import SegmentationTask

        if name:
            return self.task(name, SegmentationTask)
        if self.primary is None:
            raise ConfigError(f"terms.{self.name}: the recipe has no segmentation task")
        return self.primary

    @property
    def teacher(self) -> TeacherSpec | None:
        """The EMA teacher this term reads (None: it needs none)."""
        return None

    @property
    def reads(self) -> tuple[str, ...]:
        """The tasks whose outputs the term reads: its gradient reaches their heads (and the
        network they share), no other head (the contract tests check it)."""
        return ()

    @property
    def replaces(self) -> tuple[str, ...]:
        """The tasks whose own loss is not computed while this term trains."""
        return ()

    def __call__(
        self, outputs: dict[str, Any], batch: dict[str, Any], ctx: TermContext
    ) -> torch.Tensor:
        raise NotImplementedError


TERMS: Registry[type[Term]] = Registry("term", needs_config=True)


def build_terms(
    cfgs: list[TermConfig], tasks: list[Task], primary: SegmentationTask | None = None
) -> list[Term]:
    """The recipe's terms over its tasks; ``primary``: the segmentation task a term reads
    unless its params name another (None: the first segmentation task)."""
    from mtlseg.tasks.segmentation import SegmentationTask

    if primary is None:
        primary = next((t for t in tasks if isinstance(t, SegmentationTask)), None)
    by_name = {t.name: t for t in tasks}
    return [TERMS.get(c.kind)(c, by_name, primary) for c in cfgs]
