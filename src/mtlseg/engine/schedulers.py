"""Learning-rate schedules by name (``train.scheduler``), stepped once per optimiser step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from mtlseg.config import TrainConfig
from mtlseg.registry import Registry

SCHEDULERS: Registry[Callable] = Registry("train.scheduler")


@SCHEDULERS.register("step")
def step_decay(cfg: TrainConfig, optimizer, total_steps: int):
    """Halve the rate every ``lr_halve_every`` steps (paper 000, section 4)."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_halve_every, gamma=0.5)


@SCHEDULERS.register("cosine")
def cosine(cfg: TrainConfig, optimizer, total_steps: int):
    """Cosine annealing from ``lr`` to 0 over the whole run (paper 001, section 5.1)."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


@SCHEDULERS.register("constant")
def constant(cfg: TrainConfig, optimizer, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def build_scheduler(cfg: TrainConfig, optimizer, total_steps: int):
    return SCHEDULERS.get(cfg.scheduler)(cfg, optimizer, total_steps)
