"""Learning-rate schedules by name (``train.scheduler``), stepped once per optimiser step.

A schedule is a factor of the base rate as a function of ``progress`` in [0, 1]: the larger
of steps done / steps planned and minutes spent / ``train.max_minutes`` (see
``RunProgress``), so a run with a wall-clock budget anneals to its end as a step-limited one
does. ``train.warmup`` adds a linear warm-up over the first part of the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mtlseg.config import TrainConfig
from mtlseg.registry import Registry

Factor = Callable[[int, float], float]  # (step, progress) -> multiplier of the base rate
SCHEDULERS: Registry[Callable[[TrainConfig], Factor]] = Registry("train.scheduler")


@SCHEDULERS.register("step")
def step_decay(cfg: TrainConfig) -> Factor:
    """Halve the rate every ``lr_halve_every`` steps (paper 000, section 4)."""
    return lambda step, progress: 0.5 ** (step // cfg.lr_halve_every)


@SCHEDULERS.register("cosine")
def cosine(cfg: TrainConfig) -> Factor:
    """Cosine annealing from ``lr`` to 0 over the whole run (paper 001, section 5.1)."""
    return lambda step, progress: 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULERS.register("poly")
def poly(cfg: TrainConfig) -> Factor:
    """nnU-Net's polynomial decay, lr * (1 - progress) ** 0.9 (Isensee et al. 2021)."""
    return lambda step, progress: (1.0 - progress) ** 0.9


@SCHEDULERS.register("constant")
def constant(cfg: TrainConfig) -> Factor:
    return lambda step, progress: 1.0


class RunProgress:
    """Fraction of the run done, in [0, 1]: max(steps / planned steps, elapsed / budget).

    ``elapsed`` returns the training seconds so far (Lightning's Timer, restored on resume).
    """

    def __init__(
        self,
        total_steps: int,
        budget_s: float | None = None,
        elapsed: Callable[[], float] | None = None,
    ) -> None:
        self.total_steps, self.budget_s, self.elapsed = max(1, total_steps), budget_s, elapsed

    def __call__(self, step: int) -> float:
        done = step / self.total_steps
        if self.budget_s and self.elapsed is not None:
            done = max(done, self.elapsed() / self.budget_s)
        return min(1.0, done)


def build_scheduler(
    cfg: TrainConfig,
    optimizer: torch.optim.Optimizer,
    progress: RunProgress,
    stage_factor: Callable[[int], float] | None = None,
    stage_schedule: Callable[[int], str | None] | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR of the named schedule, with ``cfg.warmup`` of linear warm-up in front;
    ``stage_factor(step)`` scales it by the current stage's learning rate and
    ``stage_schedule(step)`` names the stage's own schedule, None: the run's (train.stages;
    BCP self-trains at a constant rate)."""
    run_factor = SCHEDULERS.get(cfg.scheduler)(cfg)
    factors = {name: SCHEDULERS.get(name)(cfg) for name in SCHEDULERS.names()}

    def multiplier(step: int) -> float:
        done = progress(step)
        warm = min(1.0, (done + 1.0 / progress.total_steps) / cfg.warmup) if cfg.warmup else 1.0
        stage = stage_factor(step) if stage_factor is not None else 1.0
        own = stage_schedule(step) if stage_schedule is not None else None
        factor = factors[own] if own is not None else run_factor
        return warm * factor(step, done) * stage

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
