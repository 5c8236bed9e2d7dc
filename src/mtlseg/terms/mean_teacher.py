"""Mean teacher (Tarvainen & Valpola 2017): the student matches an EMA teacher's predictions
on perturbed unlabelled images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mtlseg.config import TermConfig
from mtlseg.tasks.base import Requirements, Task
from mtlseg.tasks.segmentation import SegmentationTask
from mtlseg.terms.base import TERMS, TeacherSpec, Term, TermContext


@dataclass
class MeanTeacherParams:
    segmentation: str = ""  # empty: the recipe's primary task
    decay: float = 0.99  # the teacher's EMA decay (SSL4MIS: 0.99)
    # std of the teacher's input noise as a fraction of the case's intensity range, clipped at
    # 2 std (SSL4MIS: 0.1, clipped at 0.2, on images min-max scaled to [0, 1])
    noise: float = 0.1
    rampup: float = 1.0  # the weight ramps up over this fraction of the run (SSL4MIS: all)
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
class MeanTeacherTerm(Term[MeanTeacherParams]):
    """Tarvainen & Valpola 2017 (eq. 1 with the MSE consistency): the mean squared error
    between the student's class probabilities and the EMA teacher's on the same images, the
    teacher's input perturbed by Gaussian noise, times the sigmoid ramp-up. The student's
    input is the (augmented) training image. On the unlabelled pool's images (with
    ``labelled: true`` every image). The teacher (``decay``) is an EMA of the student kept
    by the model (``build_teacher``), checkpointed with it, and run in train mode (its
    dropout and batch norm as the student's). Gradients reach the student only.

    The reference (SSL4MIS ``code/train_mean_teacher_2D.py`` with ``networks/unet.py``),
    with ``unet-mean-teacher``'s value beside: noise std 0.1 clipped at +-0.2 on images
    min-max scaled to [0, 1] per volume (0.1 and 2 std of each case's intensity range in
    the units the network sees: the same perturbation under z-scoring); EMA decay 0.99
    (0.99); consistency weight 0.1 against a supervised loss of 0.5 (CE + Dice) (0.2
    against mtlseg's CE + Dice: the same ratio); its sigmoid ramp over 200 x 150 of 30k
    iterations, the whole run (``rampup: 1.0``); encoder dropout 0.05, 0.1, 0.2, 0.3, 0.5
    (``model.params.dropout``, the same); the teacher in train mode (the same).
    Deviations: the labelled and the pool's rows are forwarded as two batches
    (``train.pool_forward: separate``: one batch let batch norm tell them apart on ACDC, the
    archive's "Batch norm and the pool"); Adam at mtlseg's defaults instead of SGD 0.01."""

    Config = MeanTeacherParams
    example_tasks = ("segmentation",)

    def __init__(
        self, cfg: TermConfig, tasks: dict[str, Task], primary: SegmentationTask | None = None
    ) -> None:
        super().__init__(cfg, tasks, primary)
        self.seg = self.segmentation_task(self.params.segmentation)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.seg.name,)

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
        noise = (noise * std).clamp(-2 * std, 2 * std) * _intensity_scale(batch, rows, x)
        teacher = ctx.teacher(x + noise, meta[rows] if meta is not None else None)
        student = self.seg.probabilities(logits[rows])
        target = self.seg.probabilities(teacher[self.seg.name]).detach()
        ramp = sigmoid_rampup(ctx.progress, self.params.rampup)
        return ramp * ((student - target) ** 2).mean()


def _intensity_scale(batch: dict[str, Any], rows: torch.Tensor, x: torch.Tensor) -> Any:
    """Each row's case intensity range, shaped to scale ``x`` (1 where a batch has none)."""
    ranges = batch.get("intensity_range")
    if ranges is None:
        return 1.0
    return ranges.to(x.device)[rows.to(x.device)].to(x.dtype).view(-1, *[1] * (x.dim() - 1))


def _rows(batch: dict[str, Any], labelled: bool, n: int, device: torch.device) -> torch.Tensor:
    """The rows a consistency term uses: every row, or the unlabelled pool's."""
    flags = batch.get("labelled")
    if labelled or flags is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return ~flags.to(device)
