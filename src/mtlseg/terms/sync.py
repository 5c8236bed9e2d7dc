"""Paper 003's sync-regularisation between a segmentation and a presence task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mtlseg.config import TermConfig
from mtlseg.tasks.base import Task
from mtlseg.tasks.image_level import PresenceTask, mask_presence
from mtlseg.tasks.segmentation import SegmentationTask
from mtlseg.terms.base import TERMS, Term, TermContext


@dataclass
class SyncParams:
    segmentation: str = ""  # whose probabilities give presence; empty: the primary
    presence: str = "presence"  # the task predicting which classes are present
    eps: float = 1e-6


class _SegmentationPresenceTerm(Term[SyncParams]):
    """A term between a segmentation task and a presence task (``segmentation``, ``presence``)."""

    Config = SyncParams
    example_tasks = ("segmentation", "presence")

    def __init__(
        self, cfg: TermConfig, tasks: dict[str, Task], primary: SegmentationTask | None = None
    ) -> None:
        super().__init__(cfg, tasks, primary)
        self.seg = self.segmentation_task(self.params.segmentation)
        self.presence = self.task(self.params.presence, PresenceTask)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.seg.name, self.presence.name)


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

    def __call__(
        self, outputs: dict[str, Any], batch: dict[str, Any], ctx: TermContext | None = None
    ) -> torch.Tensor:
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

    def __call__(
        self, outputs: dict[str, Any], batch: dict[str, Any], ctx: TermContext | None = None
    ) -> torch.Tensor:
        logits = outputs[self.seg.name]
        seg = self.seg.foreground_probabilities(logits).flatten(2).amax(-1)
        head = self.presence.probabilities(outputs[self.presence.name])
        return bernoulli_kl(head, seg, self.params.eps).mean()


def bernoulli_kl(target: torch.Tensor, pred: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """KL(Bern(target) || Bern(pred)) = BCE(pred, target) - H(target), elementwise."""
    t = target.clamp(eps, 1 - eps)
    p = pred.clamp(eps, 1 - eps)
    return t * (t.log() - p.log()) + (1 - t) * ((1 - t).log() - (1 - p).log())
