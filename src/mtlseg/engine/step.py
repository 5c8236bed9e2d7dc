"""The one training step: losses -> the weighting's backward -> unscale and clip -> optimiser
step -> the EMA teacher. Lightning's ``training_step`` runs it; benchmarks and tools run the
same step outside Lightning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mtlseg.distributed import average_over_processes, rank_and_world
from mtlseg.engine.rows import PoolForward, select_rows
from mtlseg.engine.schedulers import RunProgress
from mtlseg.engine.stages import StagePlan
from mtlseg.engine.teacher import EmaTeacher
from mtlseg.errors import TrainingError
from mtlseg.models import MultiTaskModel
from mtlseg.tasks.base import Task
from mtlseg.terms import Term, TermContext
from mtlseg.weighting import BackwardContext, Weighting


@dataclass
class StepLosses:
    """What a training step's forward gives its backward."""

    losses: dict[str, torch.Tensor]  # per task and cross-task term, unweighted
    features: dict[str, torch.Tensor]  # the backbone's (gradient methods read them)
    total: torch.Tensor  # the weighting's combination of ``losses``
    autocast: bool = False  # the forward ran under a bf16/fp16 autocast (mixed precision)


@dataclass
class Optimisation:
    """How one step updates the parameters.

    ``optimizer``: torch's. ``step``: what steps it; None: its own ``step`` (through the
    scaler, if there is one); under Lightning its wrapper's, which counts the step and, under
    16-mixed, steps through the scaler (``engine.precision.ScaledByTheStep``). ``scaler``:
    16-mixed's ``GradScaler``: its scale is applied in ``backward`` and removed before
    clipping; None in fp32 and bf16. ``clip``: the gradient norm clipped to
    (``train.grad_clip``; None or 0: none). ``backward``: how a scalar loss is
    differentiated, scaled: Lightning's ``manual_backward`` (AMP's scale, DDP's reducer);
    None: ``(loss * scale).backward()``.
    """

    optimizer: torch.optim.Optimizer
    step: Callable[[], Any] | None = None
    scaler: torch.amp.GradScaler | None = None
    clip: float | None = None
    backward: Callable[[torch.Tensor], None] | None = None

    @property
    def scale(self) -> float:
        """The AMP loss scale (1 without a scaler)."""
        if self.scaler is None or not self.scaler.is_enabled():
            return 1.0
        return float(self.scaler.get_scale())

    def differentiate(self, loss: torch.Tensor) -> None:
        """``loss``'s gradients, scaled, through ``backward`` (DDP's reducer averages them)."""
        if self.backward is not None:
            self.backward(loss)
        else:
            self.plain(loss)

    def plain(self, loss: torch.Tensor) -> None:
        """``loss``'s gradients, scaled, with no reducer (a weighting that syncs gradients
        averages them itself)."""
        if self.scaler is not None and self.scaler.is_enabled():
            loss = self.scaler.scale(loss)
        loss.backward()

    def update(self) -> None:
        """Unscale (AMP), clip the norm of every optimised parameter's gradient, step."""
        if self.scaler is not None and self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if self.clip:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip)
        if self.step is not None:
            self.step()
        elif self.scaler is not None and self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skipped when a gradient overflowed
            self.scaler.update()
        else:
            self.optimizer.step()


class TrainingStep:
    """One optimiser step of a multi-task model: which tasks and terms train at the step
    (``train.stages``), their losses on the labelled rows (tasks that need annotation) or the
    whole batch (the pool's terms), the weighting's backward, the update, the teacher."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: list[Task],
        terms: list[Term],
        weighting: Weighting,
        teacher: EmaTeacher | None,
        stages: StagePlan,
        pool_forward: PoolForward,
        seed: int = 0,
    ) -> None:
        self.model, self.tasks, self.terms = model, tasks, terms
        self.weighting, self.teacher, self.stages = weighting, teacher, stages
        self.pool_forward, self.seed = pool_forward, seed
        self.progress: RunProgress | None = None  # the run's (None outside a run: 0)

    def __call__(
        self, batch: dict[str, Any], step: int, optimisation: Optimisation, epoch: int = 0
    ) -> StepLosses:
        """The whole step at optimiser step ``step``."""
        out = self.losses(batch, step, epoch)
        optimisation.optimizer.zero_grad(set_to_none=True)
        self.backward(out, optimisation)
        optimisation.update()
        if self.teacher is not None:
            self.teacher.follow(self.model)
        return out

    def losses(self, batch: dict[str, Any], step: int | None = None, epoch: int = 0) -> StepLosses:
        """Every task's and cross-task term's loss that trains at ``step`` (all when None),
        the backbone's features, and the weighting's total (logged as ``train/loss``). A
        non-finite loss is an error naming it."""
        tasks, terms = self.tasks, self.terms
        if step is not None:
            self.enter_stage(step)
            names = self.stages.active(step, [t.name for t in tasks], "tasks")
            tasks = [t for t in tasks if t.name in names]
            names = self.stages.active(step, [t.name for t in terms], "terms")
            terms = [t for t in terms if t.name in names]
        replaced = {name for term in terms for name in term.replaces}
        tasks = [t for t in tasks if t.name not in replaced]
        outputs: dict[str, Any] = {}
        features: dict[str, torch.Tensor] = {}
        if tasks or any(term.reads_outputs for term in terms):
            x = batch["image"]
            g = self.generator(step or 0, salt=1)
            for task in tasks:  # e.g. denoising trains every task on a noisy input
                x = task.training_input(x, g)
            outputs, features = self.pool_forward(self.model, x, batch)
        # a task that needs an annotation learns from the labelled rows only (the pool's
        # rows carry zero masks for batching, never read)
        labelled = batch.get("labelled")
        annotated = (outputs, batch)
        if labelled is not None and not bool(labelled.all()):
            annotated = (select_rows(outputs, labelled), select_rows(batch, labelled))
        losses = {}
        for t in tasks:
            out, b = (outputs, batch) if t.needs.reads_whole_batch else annotated
            losses[t.name] = t.loss(t.output(out), t.target(b))
        ctx = self.term_context(step or 0)
        for term in terms:
            out, b = (outputs, batch) if term.needs.reads_whole_batch else annotated
            losses[term.name] = term(out, b, ctx)
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise TrainingError(
                    f"step {step}: loss of task {name!r} is {value.item()} "
                    "(lower train.lr, or check the data for extreme values)"
                )
        total = self.weighting(losses, step or 0, epoch)
        autocast = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
        return StepLosses(losses, features, total, autocast)

    def backward(self, out: StepLosses, optimisation: Optimisation | None = None) -> None:
        """Fill every parameter's ``.grad`` as the weighting decides: loss weightings
        differentiate the total, an aggregator combines the task gradients. Without
        ``optimisation``: unscaled, by autograd alone."""
        syncs = self.weighting.syncs_gradients
        backward: Callable[[torch.Tensor], None] = torch.Tensor.backward
        if optimisation is not None:
            backward = optimisation.plain if syncs else optimisation.differentiate
        ctx = BackwardContext(
            shared_params=self.model.shared_parameters(),
            task_params=self.model.task_parameters(),
            features=out.features,
            scale=optimisation.scale if optimisation is not None else 1.0,
            shared_feature=self.model.backbone.shared_feature,
            mixed_precision=out.autocast,
            backward=backward,
        )
        self.weighting.backward(out.losses, out.total, ctx)
        if syncs:  # DDP's reducer took no part: the whole batch's gradients, once
            params = [*self.model.parameters(), *self.weighting.parameters()]
            average_over_processes([p.grad for p in params if p.grad is not None])

    def enter_stage(self, step: int) -> None:
        """What a stage does at its first step: a stage with ``reset_teacher`` makes the EMA
        teacher a copy of the student (decided by the step alone, so a resumed run does it
        exactly once)."""
        stage = self.stages.stage(step)
        if self.teacher is None or stage is None or not stage.reset_teacher:
            return
        if self.stages.starts(step):
            self.teacher.restart_from(self.model)

    def term_context(self, step: int) -> TermContext:
        """What the terms may use this step: progress, the student's and teacher's forward."""
        progress = float(self.progress(step)) if self.progress is not None else 0.0
        teacher = self.teacher.predict if self.teacher is not None else None
        return TermContext(step, progress, self.model, teacher, self.generator(step))

    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by the run's seed, the step, the process and ``salt`` (one
        stream per user): a resumed run draws what an uninterrupted one did."""
        seed = (self.seed * 1_000_003 + step) * 64 + rank_and_world()[0]
        return torch.Generator().manual_seed(seed * 8 + salt if salt else seed)
