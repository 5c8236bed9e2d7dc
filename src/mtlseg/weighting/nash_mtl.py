"""Nash-MTL (Navon et al. 2022): the Nash bargaining solution of the task gradients."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch

from mtlseg.distributed import average_over_processes
from mtlseg.errors import TrainingError
from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS, BackwardContext
from mtlseg.weighting.nash_mtl_solver import SolveWatch, restore_solver


@dataclass
class NashMTLParams(AggregatorParams):
    update_weights_every: int = 1  # solve the bargaining problem every this many steps
    max_norm: float = 1.0  # clip ||J^T alpha|| to this (0: no clipping)
    optim_niter: int = 20  # sequential convex iterations per solve
    on_failure: str = "count"  # count: log train/solver_failures | error: stop training

    def __post_init__(self) -> None:
        if self.on_failure not in ("count", "error"):
            raise ValueError(f"on_failure must be count or error, got {self.on_failure!r}")
        if self.update_weights_every < 1:
            raise ValueError(f"update_weights_every must be >= 1, got {self.update_weights_every}")


@WEIGHTINGS.register("nash-mtl")
class NashMTLWeighting(AggregatorWeighting[NashMTLParams]):
    """Nash-MTL (Navon et al. 2022, Algorithm 1): the Nash bargaining solution alpha of
    G^T G alpha = 1 / alpha, by torchjd's ``NashMTL`` (cvxpy + ECOS).

    A solve that raises or ends without an optimal status is never taken silently: it is
    counted in ``train/solver_failures`` (``on_failure: count``) or stops training
    (``on_failure: error``). The solver state (last alpha, step count, normalisation) is
    saved with the checkpoint, so a resumed run continues with the same weights.

    Between solves (``update_weights_every`` > 1) the last alpha is reused; such a step
    needs no Jacobian: one backward of sum_i alpha_i L_i gives J^T alpha, then the max-norm
    clip is applied to it, as torchjd's ``NashMTL`` would (the same gradient, tested).

    The heads, as in the authors' code (``NashMTL.backward`` in AvivNavon/nash-mtl), get the
    gradient of sum_i alpha_i L_i with the solved alpha, unclipped (the reference clips only
    the shared parameters' gradient), not the plain sum the other aggregators give them."""

    Config = NashMTLParams
    failures: torch.Tensor  # solves that raised or were not optimal
    optional_modules = ("cvxpy", "ecos")
    extra = "nash-mtl"

    def setup(self) -> None:
        super().setup()
        self.register_buffer("failures", torch.zeros((), dtype=torch.long))
        self._pending_state: dict[str, Any] | None = None
        self._watch: SolveWatch | None = None

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        from torchjd.aggregation import NashMTL

        return NashMTL(
            n_tasks=n_tasks,
            max_norm=self.cfg.max_norm,
            update_weights_every=self.cfg.update_weights_every,
            optim_niter=self.cfg.optim_niter,
        )

    def backward(
        self, losses: dict[str, torch.Tensor], total: torch.Tensor, ctx: BackwardContext
    ) -> None:
        weighting = self._aggregator(tuple(losses)).weighting
        if weighting.step % self.cfg.update_weights_every == 0:  # a solve: the Jacobian
            return super().backward(losses, total, ctx)
        self._reuse_alpha(losses, ctx, weighting)

    def head_objective(self, values: list[torch.Tensor]) -> torch.Tensor:
        """sum_i alpha_i L_i with this step's solved (unclipped) alpha."""
        assert self.aggregator is not None  # built by the step's _aggregator
        alpha = self.aggregator.weighting.prvs_alpha
        return reduce(operator.add, (float(a) * v for a, v in zip(alpha, values, strict=True)))

    def _reuse_alpha(
        self, losses: dict[str, torch.Tensor], ctx: BackwardContext, weighting: Any
    ) -> None:
        """A step between solves: J^T alpha by one backward, clipped to ``max_norm`` on the
        shared parameters; the heads get their part of the same backward, unclipped."""
        names, values = tuple(losses), self._weighted(losses, ctx)
        shared = [p for p in ctx.shared_params if p.requires_grad]
        heads = [p for p in ctx.task_params if p.requires_grad]
        alpha = torch.as_tensor(weighting.prvs_alpha, dtype=torch.float32)
        combined = self.head_objective(values)
        # this step's J^T alpha alone (.grad may hold gradients accumulated before it)
        everything = torch.autograd.grad(combined, shared + heads, allow_unused=True)
        grads, head_grads = everything[: len(shared)], everything[len(shared) :]
        for p, g in zip(heads, head_grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        # DDP: the whole batch's
        average_over_processes([g for g in grads if g is not None])  # pragma: no mutate
        squares = [(g.float() ** 2).sum() for g in grads if g is not None]
        norm = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        factor = 1.0
        if self.cfg.max_norm > 0 and norm / ctx.scale > self.cfg.max_norm:
            factor = self.cfg.max_norm / (norm / ctx.scale)
            alpha = alpha * factor
        for p, g in zip(shared, grads, strict=True):
            if g is not None:  # a parameter no loss reaches keeps no gradient
                g = g * factor
                p.grad = g if p.grad is None else p.grad + g
        weighting.step += 1
        self.last = {f"weight_{n}": float(a) for n, a in zip(names, alpha, strict=True)}
        self.check()

    def _aggregator(self, names: tuple[str, ...]) -> Any:
        aggregator = super()._aggregator(names)
        weighting = aggregator.weighting
        if self._pending_state is not None and self._pending_state["tasks"] == list(names):
            restore_solver(weighting, self._pending_state)
        self._pending_state = None
        if weighting.step == 0:  # build the cvxpy problem now, to watch its solves
            weighting._init_optim_problem()
            weighting.step = 0.0
        if self._watch is None or self._watch.problem is not weighting.prob:
            self._watch = SolveWatch(weighting)
        return aggregator

    def check(self) -> None:
        if self._watch is not None and self._watch.take_failure():
            self.failures += 1
            if self.cfg.on_failure == "error":
                raise TrainingError(
                    "Nash-MTL: the bargaining problem could not be solved (cvxpy/ECOS); "
                    "set weighting.params.on_failure=count to count failures and go on"
                )
        self.last["solver_failures"] = float(self.failures)

    def get_extra_state(self) -> dict[str, Any]:
        if self.aggregator is None:
            return self._pending_state or {}
        w = self.aggregator.weighting
        return {
            "tasks": list(self.aggregated),
            "alpha": torch.as_tensor(w.prvs_alpha).clone(),
            "norm": torch.as_tensor(w.normalization_factor).clone(),
            "step": float(w.step),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._pending_state = dict(state) if state else None
        self.aggregator = None  # rebuilt with this state at the next step
