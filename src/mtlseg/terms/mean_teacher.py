"""Mean teacher (Tarvainen & Valpola 2017): the student matches an EMA teacher's predictions
on perturbed unlabelled images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import torch

from mtlseg.config import TermConfig
from mtlseg.tasks.base import Requirements, Task
from mtlseg.tasks.segmentation import SegmentationTask
from mtlseg.terms.base import TERMS, TeacherSpec, Term, TermContext


@dataclass
class MeanTeacherParams:
    segmentation: str = "segmentation"
    decay: float = 0.99  # the teacher's EMA decay (SSL4MIS: 0.99)
    noise: float = 0.1  # std of the teacher's input noise, clipped at 2 std (SSL4MIS)
    rampup: float = 0.4  # the weight ramps up over this fraction of the run
    labelled: bool = False  # also on the labelled images (SSL4MIS: the unlabelled ones only)

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")
        if not 0.0 <= self.rampup <= 1.0:
            raise ValueError(f"rampup must be a fraction of the run, got {self.rampup}")


def sigmoid_rampup(progress: float, length: float) -> float:
    """Laine & Aila's ramp exp(-5 (1 - t)^2), t = progress / length clipped to [0, 1] (the
    mean teacher paper's and SSL4MIS's schedule of the consistency weight)."""
    if length <= 0:
        return 1.0
    t = min(max(progress / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


@TERMS.register("mean-teacher")
class MeanTeacherTerm(Term):
    """Tarvainen & Valpola 2017 (eq. 1 with the MSE consistency): the mean squared error
    between the student's class probabilities and the EMA teacher's on the same images, the
    teacher's input perturbed by Gaussian noise (std ``noise``, clipped at 2 std, as SSL4MIS
    perturbs it), times the sigmoid ramp-up. The student's input is the (augmented)
    training image. On the unlabelled pool's images (with ``labelled: true`` every image).
    The term's weight is the consistency weight (SSL4MIS: 0.1); the teacher (``decay``) is
    an EMA of the student kept by the model (``build_teacher``) and checkpointed with it.
    Gradients reach the student only."""

    Config = MeanTeacherParams
    example_tasks = ("segmentation",)

    def __init__(self, cfg: TermConfig, tasks: dict[str, Task]) -> None:
        super().__init__(cfg, tasks)
        self.seg = cast(SegmentationTask, self.task(self.params.segmentation, ("segmentation",)))

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        return Requirements(unlabelled_only=not params.labelled, dims=(2, 3))

    @property
    def teacher(self) -> TeacherSpec:
        return TeacherSpec(self.params.decay)

    def __call__(
        self, outputs: dict[str, Any], batch: dict[str, Any], ctx: TermContext
    ) -> torch.Tensor:
        logits = outputs[self.seg.name]
        rows = _rows(batch, self.params.labelled, logits.shape[0], logits.device)
        if ctx.teacher is None or not bool(rows.any()):
            return logits.sum() * 0.0  # nothing to match this step (keeps the graph)
        x = batch["image"][rows]
        meta = batch.get("meta")
        std = self.params.noise
        noise = torch.randn(x.shape, generator=ctx.generator).to(x.device, x.dtype)
        noise = (noise * std).clamp(-2 * std, 2 * std)
        teacher = ctx.teacher(x + noise, meta[rows] if meta is not None else None)
        student = self.seg.probabilities(logits[rows])
        target = self.seg.probabilities(teacher[self.seg.name]).detach()
        ramp = sigmoid_rampup(ctx.progress, self.params.rampup)
        return ramp * ((student - target) ** 2).mean()


def _rows(batch: dict[str, Any], labelled: bool, n: int, device: torch.device) -> torch.Tensor:
    """The rows a consistency term uses: every row, or the unlabelled pool's."""
    flags = batch.get("labelled")
    if labelled or flags is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return ~flags.to(device)
