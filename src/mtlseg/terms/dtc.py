"""Dual-task consistency (Luo et al., AAAI 2021): the segmentation agrees with the
segmentation implied by a signed-distance head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mtlseg.config import TermConfig
from mtlseg.tasks.base import Task
from mtlseg.tasks.geometry import DistanceTask
from mtlseg.tasks.segmentation import SegmentationTask
from mtlseg.terms.base import TERMS, Term, TermContext
from mtlseg.terms.mean_teacher import sigmoid_rampup


@dataclass
class DTCParams:
    segmentation: str = ""  # empty: the recipe's primary task
    distance: str = "distance"  # a ``distance`` task: the signed distance head
    k: float = 1500.0  # the transform's sharpness: sigmoid(-k * sdf) (the authors' value)
    rampup: float = 1.0  # the weight ramps up over this fraction of the run (the authors')

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")


@TERMS.register("dtc")
class DualTaskConsistency(Term[DTCParams]):
    """Luo et al. 2021, eq. 4: L_DTC = mean over pixels and images of
    (T(d_hat) - sigma(s_hat))^2 with T(d) = sigmoid(-k d), between the distance head's
    prediction d_hat (negative inside, as the ``distance`` task's target) and the
    segmentation's foreground probabilities, on every image of the batch, labelled or from
    the pool (it needs no annotation), times the sigmoid ramp-up. The supervised losses
    (segmentation, and the distance task's on labelled images) are the tasks' own.

    The reference (Luo et al.'s ``train_la_dtc.py``), with ``unet-dtc``'s value beside:
    distance loss weight 0.3 (0.3); consistency weight ``--consistency`` 1.0 (the term's
    weight, 1.0; their ``--consistency_weight`` 0.1 is never read); its sigmoid ramp-up
    over ``--consistency_rampup`` 40 x 150 iterations = the whole 6000-iteration run
    (``rampup: 1.0``); k = 1500 (1500); the distance head one 1x1 conv on the last decoder
    stage (``hidden: 0``).

    Deviation: the authors bound the distance head with tanh and regress a min-max
    normalised distance; mtlseg's ``distance`` head is linear on a distance truncated to
    [-1, 1]. T saturates at a sharpness of 1500, so only the sign of d_hat matters here
    too. Gradients reach both heads, as in the paper."""

    Config = DTCParams
    example_tasks = ("segmentation", "distance")

    def __init__(
        self, cfg: TermConfig, tasks: dict[str, Task], primary: SegmentationTask | None = None
    ) -> None:
        super().__init__(cfg, tasks, primary)
        self.seg = self.segmentation_task(self.params.segmentation)
        self.distance = self.task(self.params.distance, DistanceTask)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.seg.name, self.distance.name)

    def __call__(
        self, outputs: dict[str, Any], batch: dict[str, Any], ctx: TermContext | None = None
    ) -> torch.Tensor:
        seg = self.seg.foreground_probabilities(outputs[self.seg.name])
        implied = torch.sigmoid(-self.params.k * outputs[self.distance.name].float())
        ramp = sigmoid_rampup(ctx.progress, self.params.rampup) if ctx is not None else 1.0
        return ramp * ((implied - seg) ** 2).mean()
