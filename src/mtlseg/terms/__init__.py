"""Loss terms between tasks' outputs, by registry kind (``terms:`` in a recipe).

A term has no label of its own: it reads the model's outputs of the tasks it names and
returns a scalar that the weighting combines with the task losses, under the term's name
and weight. Each term says which branches its gradient reaches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mtlseg.config import TermConfig, build_dataclass
from mtlseg.errors import ConfigError
from mtlseg.registry import Registry
from mtlseg.tasks.base import Task
from mtlseg.tasks.image_level import mask_presence


class Term:
    """Base class: ``Config`` (a dataclass of params), ``__call__(outputs, batch) -> scalar``."""

    Config: type = object
    likelihood: str = "classification"  # the form uncertainty weighting gives it

    def __init__(self, cfg: TermConfig, tasks: dict[str, Task]) -> None:
        self.name: str = cfg.name or cfg.kind
        self.kind, self.weight = cfg.kind, cfg.weight
        self.params = build_dataclass(self.Config, cfg.params, f"terms.{self.name}.params")
        self.tasks = tasks

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

    def __call__(self, outputs: dict[str, Any], batch: dict[str, Any]) -> torch.Tensor:
        raise NotImplementedError


TERMS: Registry[type[Term]] = Registry("term")


@dataclass
class SyncParams:
    segmentation: str = "segmentation"  # the task whose pixel probabilities give presence
    presence: str = "presence"  # the task predicting which classes are present
    eps: float = 1e-6


class _SegmentationPresenceTerm(Term):
    """A term between a segmentation task and a presence task (``segmentation``, ``presence``)."""

    Config = SyncParams

    def __init__(self, cfg, tasks) -> None:
        super().__init__(cfg, tasks)
        self.seg = self.task(self.params.segmentation, ("segmentation",))
        self.presence = self.task(self.params.presence, ("presence",))


@TERMS.register("sync")
class SyncTerm(_SegmentationPresenceTerm):
    """Paper 003's sync-regularisation, eq. (3): L_sync = BCE(P(Y_hat), C_hat).

    P(Y_hat)_k = 1 when at least one pixel (voxel) of the hard predicted segmentation, at
    the output's full resolution, is class k ("volume greater than 0 is set to 1"), else 0:
    a target read off the segmentation, detached. C_hat: the presence (class) branch's
    prediction. So the feedback goes "through the branch for the class task" only: the
    presence head and, through it, the shared latent space get a gradient, the segmentation
    output none. Needs no ground truth (it can use images without masks).

    Deviation: the paper sums over the images of the batch; this is the mean over images
    and foreground classes (a constant factor, folded into the term's weight).
    """

    def __call__(self, outputs, batch):
        logits = outputs[self.seg.name]
        with torch.no_grad():
            target = mask_presence(self.seg.decode(logits), self.seg.ctx.num_classes)
        head = outputs[self.presence.name].float()
        return F.binary_cross_entropy_with_logits(head, target.to(head.dtype))


@TERMS.register("sync-bidirectional")
class BidirectionalSyncTerm(_SegmentationPresenceTerm):
    """A variant of paper 003's sync-regularisation with gradients into both branches, the
    "reversible loss" its limitations section calls "a more reasonable way" (not the
    paper's eq. 3, which is ``sync``).

    P(Y_hat)_k = max over pixels (voxels) of class k's probability (differentiable); the
    Bernoulli KL divergence KL(C_hat || P) = BCE(P, C_hat) - H(C_hat) between the presence
    head's probabilities and it: zero where the branches agree; the segmentation's gradient
    lands on each class's most probable pixel. Mean over classes and samples.
    """

    def __call__(self, outputs, batch):
        logits = outputs[self.seg.name]
        seg = self.seg.foreground_probabilities(logits).flatten(2).amax(-1)
        head = self.presence.probabilities(outputs[self.presence.name])
        return bernoulli_kl(head, seg, self.params.eps).mean()


def bernoulli_kl(target: torch.Tensor, pred: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(Bern(target) || Bern(pred)) = BCE(pred, target) - H(target), elementwise."""
    t = target.clamp(eps, 1 - eps)
    p = pred.clamp(eps, 1 - eps)
    return t * (t.log() - p.log()) + (1 - t) * ((1 - t).log() - (1 - p).log())


def build_terms(cfgs: list[TermConfig], tasks: list[Task]) -> list[Term]:
    by_name = {t.name: t for t in tasks}
    return [TERMS.get(c.kind)(c, by_name) for c in cfgs]
