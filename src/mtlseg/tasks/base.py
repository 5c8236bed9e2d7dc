"""A task = where its target comes from + its head + its loss, registered by kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection

from mtlseg.config import TaskConfig, typed
from mtlseg.models.base import Backbone
from mtlseg.registry import Registry


@dataclass
class TaskContext:
    """What a task may need to build its head: the backbone and the data's shape."""

    backbone: Backbone
    num_classes: int
    in_channels: int
    image_size: int
    out_channels: int = 0  # channels of the primary (segmentation) output
    model_input: str = "image"  # model.input: what the network sees (mtlseg.models.inputs)
    label_values: dict[str, list[str]] = field(
        default_factory=dict
    )  # labels file: column -> values
    label_resize: str = "linear"  # data.label_resize: how masks meet a coarser output


@dataclass(frozen=True)
class Requirements:
    """What a task (or loss term) needs, declared in one record and checked in one place
    (``mtlseg.engine.requirements.check_requirements``)."""

    masks: bool = False  # reads the segmentation masks (False: learns from an image alone)
    labels: str | None = None  # a labels-file column (``case_labels.csv``)
    classes: tuple[str, ...] | None = None  # the column's classes, when the recipe names them
    dense: str | None = None  # a dense array of the dataset (the nyuv2 format's depth, normal)
    meta: tuple[str, ...] = ()  # metadata fields every training slice must have
    pairs: bool = False  # every batch holds adjacent-slice pairs (a pair sampler)
    dims: tuple[int, ...] = (2,)  # data.dims it works with: 2D slices/images, 3D patches
    model_input: str | None = None  # what the network must see (``model.input``)
    channels: int | None = None  # input channels the data must have (3: RGB)
    dense_channels: int = 1  # channels of the ``dense`` array
    unlabelled_only: bool = False  # learns from the unlabelled pool only (a consistency term)
    # made to learn from the pool too (pretraining on it), though labelled images also serve
    wants_pool: bool = False
    # reads the labelled and the pool's rows of one batch together (BCP mixes them), telling
    # them apart by ``batch["labelled"]``; it cannot train without a pool
    mixes_pool: bool = False

    @property
    def learns_without_annotation(self) -> bool:
        """Whether it learns from an image of the unlabelled pool: it reads no mask, labels
        column or dense array, and needs no pair batches (pairs come from labelled cases)."""
        return not (self.masks or self.labels or self.dense or self.pairs)

    @property
    def reads_whole_batch(self) -> bool:
        """Whether it sees the pool's rows too (else the labelled rows only)."""
        return self.learns_without_annotation or self.mixes_pool


P = TypeVar("P")  # a task's params: its Config dataclass


class Task(Generic[P]):
    """Base class. Subclasses set ``Config`` (a dataclass of their params) and ``requires``
    (or override ``requirements`` when they depend on the params), and implement ``target``
    and ``loss``; ``build_head`` returns None when the backbone's own output is used.
    """

    Config: type = object
    requires: ClassVar[Requirements] = Requirements()
    likelihood: str = "regression"  # or "classification" (a cross-entropy loss): for UW
    # params of a small example instance, where the defaults do not make one (contract tests)
    example: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: TaskConfig, ctx: TaskContext) -> None:
        self.name: str = cfg.name or cfg.kind
        self.kind = cfg.kind
        self.weight = cfg.weight
        self.params: P = typed(self.Config, cfg.params, f"tasks.{self.name}.params")
        self.ctx = ctx
        self.needs = self.requirements(self.params)

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        """What this task needs with these params (its class's ``requires`` by default)."""
        return cls.requires

    @classmethod
    def output_channels(cls, params: Any, num_classes: int) -> int:
        """Channels the backbone must output when this is the primary task."""
        return num_classes

    def build_head(self) -> nn.Module | None:
        return None

    def training_input(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training input as this task wants every task to see it (denoising adds
        noise; Models Genesis corrupts it); ``generator``: seeded by the step, so a resumed
        run draws what an uninterrupted one did."""
        return x

    def metrics(self) -> Metric | MetricCollection | None:
        """Validation metrics, updated with ``(metric_input(output), metric_target(target))``."""
        return None

    def metric_input(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def metric_target(self, target: Any) -> Any:
        """What the metrics compare ``metric_input`` with (the loss's target by default)."""
        return target

    def metric_names(self, key: str) -> list[str]:
        """Names of the entries of a vector-valued metric ``key`` (e.g. per-class recall)."""
        return [key]

    def output(self, outputs: dict[str, torch.Tensor]) -> Any:
        """What ``loss`` takes from the model's outputs: this task's entry."""
        return outputs[self.name]

    def target(self, batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


TASKS: Registry[type[Task]] = Registry("task", needs_config=True)
register_task = TASKS.register


def build_task(cfg: TaskConfig, ctx: TaskContext) -> Task:
    return TASKS.get(cfg.kind)(cfg, ctx)
