"""Weightings with learned state: uncertainty weighting (UW) and FAMO."""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import torch
from torch import nn

from mtlseg.distributed import mean_over_processes
from mtlseg.errors import ConfigError
from mtlseg.weighting.base import LIKELIHOODS, WEIGHTINGS, Weighting


@dataclass
class UWParams:
    init: float = 0.0  # initial log-variance s = log sigma^2 of every task
    forms: dict[str, str] = field(default_factory=dict)  # override: task -> regression | ...


@WEIGHTINGS.register("uw")
class UncertaintyWeighting(Weighting[UWParams]):
    """Homoscedastic uncertainty weighting (Kendall et al. 2018, eq. 7 and 10), with
    s_t = log sigma_t^2 learned by the model's optimiser:

    regression      (1 / 2 sigma^2) L + log sigma  =  0.5 exp(-s) L + 0.5 s
    classification  (1 / sigma^2) L + log sigma    =  exp(-s) L + 0.5 s

    Each task's form comes from its likelihood (cross-entropy losses are classification),
    ``forms`` overrides it; each recipe weight scales its loss first."""

    Config = UWParams

    def setup(self) -> None:
        super().setup()
        unknown = sorted(set(self.cfg.forms) - set(self.task_weights))
        if unknown:
            raise ConfigError(
                f"weighting.params.forms: no task {unknown[0]!r}; tasks: {', '.join(self.task_weights)}"
            )
        self.forms = {**self.likelihoods, **self.cfg.forms}
        bad = {n: f for n, f in self.forms.items() if f not in LIKELIHOODS}
        if bad:
            name, form = next(iter(bad.items()))
            raise ConfigError(
                f"weighting.params.forms.{name}: {form!r}; valid: {', '.join(LIKELIHOODS)}"
            )
        self.names = list(self.task_weights)
        self.log_vars = nn.Parameter(torch.full((len(self.names),), float(self.cfg.init)))

    def _coef(self, name: str) -> float:
        return 0.5 if self.forms[name] == "regression" else 1.0

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        index = {n: i for i, n in enumerate(self.names)}
        return {
            n: self.task_weights[n] * self._coef(n) * torch.exp(-self.log_vars[index[n]])
            for n in losses
        }

    def forward(
        self, losses: dict[str, torch.Tensor], step: int = 0, epoch: int = 0
    ) -> torch.Tensor:
        index = {n: i for i, n in enumerate(self.names)}
        weights = self.weights(losses, step, epoch)
        self.last = {
            f"weight_{n}": float(w.detach() if isinstance(w, torch.Tensor) else w)
            for n, w in weights.items()
        }
        self.last.update({f"log_var_{n}": float(self.log_vars[index[n]].detach()) for n in losses})
        terms = (weights[n] * loss + 0.5 * self.log_vars[index[n]] for n, loss in losses.items())
        return reduce(operator.add, terms)


@dataclass
class FAMOParams:
    lr: float = 0.025  # step size of the weight logits' Adam (the authors' default)
    weight_decay: float = 0.001  # gamma, the logits' regularisation
    min_loss: float = 0.0  # lower bound of every loss (b_i); losses here are >= 0
    eps: float = 1e-8


@WEIGHTINGS.register("famo")
class FAMOWeighting(Weighting[FAMOParams]):
    """Fast Adaptive Multitask Optimisation (Liu et al. 2023, Algorithm 1): minimise
    sum_i z_i log(L_i - b_i) / c with z = softmax(xi) and c = sum_i z_i / (L_i - b_i), so each
    task's effective weight is z_i / (c (L_i - b_i)); then move xi towards the tasks whose
    log-loss fell least, by its own Adam step on
    d = J_softmax(xi)^T [log(L_prev - b) - log(L_now - b)]. With recipe weights w_i, L_i is
    w_i times the task's loss, in the weights and in the step alike.

    One deviation, for cost: L_now is the next training step's loss (the next mini-batch),
    not a second forward pass of the same batch as in the authors' code, so FAMO costs no
    extra forward. The logits and their Adam state are saved with the checkpoint."""

    Config = FAMOParams
    prev: torch.Tensor  # the last step's losses

    def setup(self) -> None:
        super().setup()
        self.names = list(self.task_weights)
        k = len(self.names)
        # FAMO steps its logits itself: requires_grad False keeps them out of the model's
        # optimiser and of DDP's reducer (a parameter, so .to(device) keeps Adam's reference)
        self.logits = nn.Parameter(torch.zeros(k), requires_grad=False)
        self.register_buffer("prev", torch.full((k,), float("nan")))
        self._optimizer = torch.optim.Adam(
            [self.logits], lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )

    def _shifted(self, values: torch.Tensor) -> torch.Tensor:
        """L_i - b_i, kept above 0 by eps."""
        return values - self.cfg.min_loss + self.cfg.eps

    def _update(self, now: torch.Tensor) -> None:
        """Algorithm 1, lines 7-8: the logits' step from the change of each log-loss
        (tasks not trained at both steps, e.g. across a stage change, contribute nothing)."""
        prev = self.prev.to(now.device)
        both = ~(torch.isnan(prev) | torch.isnan(now))
        if not both.any():
            return
        delta = torch.zeros_like(now)
        delta[both] = self._shifted(prev[both]).log() - self._shifted(now[both]).log()
        with torch.enable_grad():
            logits = self.logits.detach().requires_grad_()
            (grad,) = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta)
        self.logits.grad = grad
        self._optimizer.step()
        self.logits.grad = None

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        """Effective weights z_i w_i / (c (w_i L_i - b)); the weighted sum they give has the
        gradient of sum_i z_i log(w_i L_i - b) / c (w_i: recipe weights)."""
        index = [self.names.index(n) for n in losses]
        # under DDP every process steps its logits with the losses of the whole batch
        values = mean_over_processes(torch.stack([losses[n].detach() for n in losses]).float())
        recipe = torch.tensor([self.task_weights[n] for n in losses], device=values.device)
        weighted = values * recipe  # the losses FAMO balances, in the weights and the step alike
        if self.training:
            now = torch.full((len(self.names),), float("nan"), device=values.device)
            now[index] = weighted
            self._update(now)
            self.prev.copy_(now)
        z = torch.softmax(self.logits.detach()[index], dim=0)
        shifted = self._shifted(weighted)
        effective = z / ((z / shifted).sum() * shifted) * recipe
        return {n: float(w) for n, w in zip(losses, effective, strict=True)}

    def get_extra_state(self) -> dict[str, Any]:
        return {"adam": copy.deepcopy(self._optimizer.state_dict())}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state["adam"])
