"""Loss terms between tasks' outputs, by registry kind (``terms:`` in a recipe).

A term has no label of its own: it reads the model's outputs of the tasks it names and
returns a scalar that the weighting combines with the task losses, under the term's name
and weight. Gradients flow into every branch it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtlseg.config import TermConfig, build_dataclass
from mtlseg.errors import ConfigError
from mtlseg.registry import Registry
from mtlseg.tasks.base import Task


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


@TERMS.register("sync")
class SyncTerm(Term):
    """Paper 003's sync-regularisation, eq. (3): BCE(P(Y_hat), C_hat) between the presence
    read off the segmentation and the presence head's prediction.

    P(Y_hat)_k = max over pixels (voxels) of class k's probability: a differentiable form
    of the paper's "volume > 0". The target C_hat is a prediction too, so the BCE has its
    entropy subtracted (the Bernoulli KL divergence KL(C_hat || P)): exactly zero where the
    branches agree, the paper's BCE gradient for the segmentation branch, and a gradient
    pulling the presence head towards the segmentation. Mean over classes and samples.
    """

    Config = SyncParams

    def __init__(self, cfg, tasks) -> None:
        super().__init__(cfg, tasks)
        self.seg = self.task(self.params.segmentation, ("segmentation",))
        self.presence = self.task(self.params.presence, ("presence",))

    def __call__(self, outputs, batch):
        logits = outputs[self.seg.name]
        logits = logits[0] if isinstance(logits, list) else logits  # deep supervision
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
