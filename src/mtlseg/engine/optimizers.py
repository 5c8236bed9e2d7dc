"""Optimisers by name (``train.optimizer``), built over the trainable parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from mtlseg.config import TrainConfig
from mtlseg.registry import Registry

OPTIMIZERS: Registry[Callable] = Registry("train.optimizer")


@OPTIMIZERS.register("adam")
def adam(params: Iterable, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """Adam (papers 000 and 001); ``weight_decay`` is L2 added to the gradient."""
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW: decoupled weight decay (Loshchilov and Hutter 2019)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, nnU-Net's optimiser (lr 1e-2, momentum 0.99, wd 3e-5);
    ``momentum: 0`` is plain SGD."""
    return torch.optim.SGD(
        params,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def build_optimizer(params: Iterable, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.optimizer)(params, cfg, lr)
