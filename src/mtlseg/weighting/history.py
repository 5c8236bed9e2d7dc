"""Weightings from the history of each task's training loss (DWA, SoftAdapt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from mtlseg.distributed import mean_over_processes
from mtlseg.weighting.base import WEIGHTINGS, Weighting


@dataclass
class HistoryParams:
    unit: str = "epoch"  # a period is `every` epochs or `every` optimiser steps
    every: int = 1

    def __post_init__(self) -> None:
        if self.unit not in ("epoch", "step"):
            raise ValueError(f"unit must be epoch or step, got {self.unit!r}")
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")


HP = TypeVar("HP", bound=HistoryParams)


class LossHistoryWeighting(Weighting[HP]):
    """Weights from the mean training loss of each task over the last two completed periods
    (epochs, or windows of steps), constant within a period. The running sums and the two
    means are buffers, so a resumed run continues with the same weights.

    Subclasses implement ``from_history(previous, last) -> (K,) factors``; each task's recipe
    weight multiplies its factor. Until two periods are complete every factor is 1. When the
    set of losses changes (a new stage of ``train.stages``), the history starts afresh over
    the new set: loss ratios across a change of objective mean nothing. Under DDP the losses
    are averaged over the processes first, so every process keeps the same history.
    """

    history: torch.Tensor  # (2, K) the two last periods' mean losses
    running: torch.Tensor  # (K,) the current period's sums
    count: torch.Tensor
    period: torch.Tensor
    active: torch.Tensor  # (K,) bool: the losses being weighted now

    def setup(self) -> None:
        super().setup()
        k = len(self.task_weights)
        self.all_names = list(self.task_weights)
        self.register_buffer("history", torch.full((2, k), float("nan"), dtype=torch.float64))
        self.register_buffer("running", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("period", torch.full((), -1, dtype=torch.long))
        self.register_buffer("active", torch.ones(k, dtype=torch.bool))

    @property
    def names(self) -> list[str]:
        """The losses being weighted now."""
        return [n for n, on in zip(self.all_names, self.active.tolist(), strict=True) if on]

    def _observe(self, losses: dict[str, torch.Tensor], step: int, epoch: int) -> None:
        if set(losses) != set(self.names):
            self.active.copy_(torch.tensor([n in losses for n in self.all_names]))
            self.history.fill_(float("nan"))
            self.running.zero_()
            self.count.zero_()
        period = (epoch if self.cfg.unit == "epoch" else step) // self.cfg.every
        if period != int(self.period) and int(self.count) > 0:
            mean = self.running / self.count
            self.history.copy_(torch.stack([self.history[1], mean]))
            self.running.zero_()
            self.count.zero_()
        self.period.fill_(period)
        zero = torch.zeros((), dtype=torch.float64, device=self.running.device)
        values = [
            losses[n].detach().double().to(zero.device) if n in losses else zero
            for n in self.all_names
        ]
        self.running += mean_over_processes(torch.stack(values))
        self.count += 1

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # checkpoints written before staged training have no ``active``: every loss was active
        state_dict.setdefault(f"{prefix}active", torch.ones_like(self.active))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def factors(self) -> torch.Tensor:
        history = self.history[:, self.active]
        if torch.isnan(history).any():
            return torch.ones(history.shape[1], dtype=torch.float64)
        return self.from_history(history[0], history[1])

    def from_history(self, previous: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        if self.training:
            self._observe(losses, step, epoch)
        factors = self.factors()
        return {
            n: self.task_weights[n] * float(f) for n, f in zip(self.names, factors, strict=True)
        }


@dataclass
class DWAParams(HistoryParams):
    temperature: float = 2.0  # Liu et al. use T = 2


@WEIGHTINGS.register("dwa")
class DWAWeighting(LossHistoryWeighting[DWAParams]):
    """Dynamic Weight Average (Liu et al. 2019, eq. 7): w_k = L_k(t-1) / L_k(t-2),
    lambda_k = K exp(w_k / T) / sum_i exp(w_i / T); a task whose loss falls slowly gains weight."""

    Config = DWAParams

    def from_history(self, previous: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        ratio = last / previous.clamp(min=1e-12)
        return len(ratio) * torch.softmax(ratio / self.cfg.temperature, dim=0)


@dataclass
class SoftAdaptParams(HistoryParams):
    beta: float = 0.1  # > 0 favours tasks whose loss rises or falls slowest
    normalized: bool = True  # slopes divided by sum |slope| (the paper's normalised variant)
    loss_weighted: bool = False  # alpha_k also proportional to L_k (the loss-weighted variant)


@WEIGHTINGS.register("softadapt")
class SoftAdaptWeighting(LossHistoryWeighting[SoftAdaptParams]):
    """SoftAdapt (Heydari et al. 2019, eq. 2-4): slope s_k = L_k(t-1) - L_k(t-2), optionally
    normalised, alpha_k = exp(beta s_k) / sum_i exp(beta s_i) (times L_k when loss-weighted);
    factors are K alpha_k, so equal slopes give every task 1 (the scale of ``fixed``)."""

    Config = SoftAdaptParams

    def from_history(self, previous: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        slope = last - previous
        if self.cfg.normalized:
            slope = slope / (slope.abs().sum() + 1e-12)
        logits = self.cfg.beta * slope
        if self.cfg.loss_weighted:
            logits = logits + last.clamp(min=1e-12).log()
        return len(slope) * torch.softmax(logits, dim=0)
