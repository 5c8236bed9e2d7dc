"""Gradient aggregators through torchjd: per-task gradients of the shared parameters are
combined into one update (Jacobian descent), while each head keeps its own gradient."""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass

import torch

from mtlseg.distributed import average_over_processes
from mtlseg.errors import ConfigError, TrainingError
from mtlseg.weighting.base import WEIGHTINGS, Weighting


@dataclass
class AggregatorParams:
    parallel_chunk_size: int | None = None  # rows of the Jacobian per vmapped backward (None: all)


class AggregatorWeighting(Weighting):
    """Takes over ``backward``: one Jacobian of the (recipe-weighted) losses with respect to
    the shared parameters, by torchjd's ``autojac.backward`` (one vmapped backward pass per
    task at most), is aggregated by ``build_aggregator()`` into ``.grad``; the heads'
    parameters get the gradient of ``head_objective`` (torchjd's convention: the plain sum
    of the losses, i.e. each head its own task's gradient; Nash-MTL overrides it).

    The Jacobian is taken through the whole shared network, not at a cut of shared features
    (torchjd's ``mtl_backward``): our backbones hand heads nested features (decoder stages
    that feed later stages), where a feature cut would count some paths twice.

    Logged per step: each task's weight (``weight_<task>``, for aggregators that weight rows)
    and the cosine between each pair of task gradients (``cos_<a>-<b>``).

    Under DDP the Jacobian is averaged over the processes before it is aggregated (one
    all-reduce of K x P numbers): every process then aggregates the Jacobian of the whole
    batch, as one process would, rather than averaging per-process aggregates (the methods
    are not linear)."""

    Config = AggregatorParams
    syncs_gradients = True
    requires: tuple[str, ...] = ()  # optional modules, installed with mtlseg's extras
    extra: str = ""  # the pip extra that installs them

    def __init__(self, task_weights, cfg, primary, likelihoods=None) -> None:
        super().__init__(task_weights, cfg, primary, likelihoods)
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"weighting: {type(self).__name__} needs {', '.join(missing)}, which are not "
                f'installed: pip install "mtlseg[{self.extra}]"'
            )
        self.aggregator = None
        self.aggregated: tuple[str, ...] = ()  # the tasks the aggregator was built for

    def build_aggregator(self, n_tasks: int):
        raise NotImplementedError

    def weights(self, losses, step, epoch=0):
        # the value Lightning logs as train/loss; the update itself is made in backward
        return {n: self.task_weights[n] for n in losses}

    def _aggregator(self, names: tuple[str, ...]):
        if self.aggregator is None or names != self.aggregated:
            # a new set of losses (a stage change) starts a stateful method afresh
            self.aggregator = self.build_aggregator(len(names))
            self.aggregated = names
            self.aggregator.register_forward_pre_hook(self._observe)
        return self.aggregator

    def _observe(self, module, args) -> None:
        """Cosines between the task gradients, from the Jacobian the aggregator receives."""
        (matrix,) = args
        with torch.no_grad():
            unit = matrix / matrix.norm(dim=1, keepdim=True).clamp(min=1e-12)
            cos = unit @ unit.T
        names = self.aggregated
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                self.last[f"cos_{names[i]}-{names[j]}"] = float(cos[i, j])

    def backward(self, losses, total, ctx) -> None:
        from torchjd.autojac import backward as jac_backward
        from torchjd.autojac import jac_to_grad

        names = tuple(losses)
        values = self._weighted(losses, ctx)
        self.last = {}
        shared = [p for p in ctx.shared_params if p.requires_grad]
        jac_backward(
            values,
            inputs=shared,
            retain_graph=True,  # the heads' backward follows
            parallel_chunk_size=self.cfg.parallel_chunk_size,
        )
        average_over_processes([p.jac for p in shared])
        # parameters no active loss reaches (a task's attention before its stage) get no
        # gradient, as with a plain backward, rather than a zero that Adam would step on
        unused = [p for p in shared if not p.jac.any()]
        if ctx.scale != 1.0:  # aggregate the unscaled Jacobian: methods that clip are not
            for p in shared:  # scale-invariant; AMP's unscale_ later divides .grad again
                p.jac = p.jac / ctx.scale
        weights = jac_to_grad(shared, self._aggregator(names))
        if ctx.scale != 1.0:
            for p in shared:
                p.grad = p.grad * ctx.scale
        for p in unused:
            p.grad = None
        if weights is not None:
            self.last.update(
                {f"weight_{n}": float(w) for n, w in zip(names, weights.flatten(), strict=True)}
            )
        self._backward_heads(values, ctx)
        self.check()

    def _weighted(self, losses, ctx) -> list[torch.Tensor]:
        """The recipe-weighted (AMP-scaled) losses, in the order of ``losses``."""
        return [losses[n] * (self.task_weights[n] * ctx.scale) for n in losses]

    def head_objective(self, values: list[torch.Tensor]) -> torch.Tensor:
        """What the heads' gradient is taken of, after the shared update is decided: the sum
        of the (weighted) losses, so each head gets its own task's gradient."""
        return sum(values)

    def _backward_heads(self, values: list[torch.Tensor], ctx) -> None:
        """The heads' gradient of ``head_objective`` (only the paths from the losses to the
        heads: cheap); the graph is freed."""
        heads = [p for p in ctx.task_params if p.requires_grad]
        if heads:
            torch.autograd.backward(self.head_objective(values), inputs=heads)

    def check(self) -> None:
        """Raise or count a failure of the aggregator's solver (Nash-MTL)."""


@WEIGHTINGS.register("pcgrad")
class PCGradWeighting(AggregatorWeighting):
    """PCGrad (Yu et al. 2020, Algorithm 1): project each gradient off the ones it conflicts
    with, then sum."""

    def build_aggregator(self, n_tasks):
        from torchjd.aggregation import PCGrad

        return PCGrad()


@dataclass
class CAGradParams(AggregatorParams):
    c: float = 0.4  # radius of the ball around the mean gradient (Liu et al. 2021 use 0.4)


@WEIGHTINGS.register("cagrad")
class CAGradWeighting(AggregatorWeighting):
    """CAGrad (Liu et al. 2021, Algorithm 1): the update that maximises the worst task's
    improvement within a ball of radius c ||g_0|| around the mean gradient g_0."""

    Config = CAGradParams
    requires = ("cvxpy",)
    extra = "nash-mtl"

    def build_aggregator(self, n_tasks):
        from torchjd.aggregation import CAGrad

        return CAGrad(c=self.cfg.c)


@dataclass
class MGDAParams(AggregatorParams):
    epsilon: float = 0.001  # Frank-Wolfe stopping tolerance
    max_iters: int = 100


@WEIGHTINGS.register("mgda")
class MGDAWeighting(AggregatorWeighting):
    """MGDA (Sener & Koltun 2018, Algorithm 2): the min-norm point of the gradients' convex
    hull, by Frank-Wolfe."""

    Config = MGDAParams

    def build_aggregator(self, n_tasks):
        from torchjd.aggregation import MGDA

        return MGDA(epsilon=self.cfg.epsilon, max_iters=self.cfg.max_iters)


@WEIGHTINGS.register("imtl-g")
class IMTLGWeighting(AggregatorWeighting):
    """IMTL-G (Liu et al. 2021, eq. 10): the update with equal projections onto every task's
    unit gradient."""

    def build_aggregator(self, n_tasks):
        from torchjd.aggregation import IMTLG

        return IMTLG()


@dataclass
class AlignedMTLParams(AggregatorParams):
    scale_mode: str = "min"  # min | median | rmse: the balance transformation's scale

    def __post_init__(self) -> None:
        if self.scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be min, median or rmse, got {self.scale_mode!r}")


@WEIGHTINGS.register("aligned-mtl")
class AlignedMTLWeighting(AggregatorWeighting):
    """Aligned-MTL (Senushkin et al. 2023, Algorithm 1): align the gradients' principal
    components so the system of gradients is well conditioned."""

    Config = AlignedMTLParams

    def build_aggregator(self, n_tasks):
        from torchjd.aggregation import AlignedMTL

        return AlignedMTL(scale_mode=self.cfg.scale_mode)


@WEIGHTINGS.register("upgrad")
class UPGradWeighting(AggregatorWeighting):
    """UPGrad (Quinton & Rey 2024, eq. 5): project each gradient onto the dual cone of all
    of them, then average."""

    def build_aggregator(self, n_tasks):
        from torchjd.aggregation import UPGrad

        return UPGrad()


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
class NashMTLWeighting(AggregatorWeighting):
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
    requires = ("cvxpy", "ecos")
    extra = "nash-mtl"

    def __init__(self, task_weights, cfg, primary, likelihoods=None) -> None:
        super().__init__(task_weights, cfg, primary, likelihoods)
        self.register_buffer("failures", torch.zeros((), dtype=torch.long))
        self._pending_state = None

    def build_aggregator(self, n_tasks: int):
        from torchjd.aggregation import NashMTL

        return NashMTL(
            n_tasks=n_tasks,
            max_norm=self.cfg.max_norm,
            update_weights_every=self.cfg.update_weights_every,
            optim_niter=self.cfg.optim_niter,
        )

    def backward(self, losses, total, ctx) -> None:
        weighting = self._aggregator(tuple(losses)).weighting
        if weighting.step % self.cfg.update_weights_every == 0:  # a solve: the Jacobian
            return super().backward(losses, total, ctx)
        self._reuse_alpha(losses, ctx, weighting)

    def head_objective(self, values: list[torch.Tensor]) -> torch.Tensor:
        """sum_i alpha_i L_i with this step's solved (unclipped) alpha."""
        alpha = self.aggregator.weighting.prvs_alpha
        return sum(float(a) * v for a, v in zip(alpha, values, strict=True))

    def _reuse_alpha(self, losses, ctx, weighting) -> None:
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
        average_over_processes([g for g in grads if g is not None])  # DDP: the whole batch's
        norm = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
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

    def _aggregator(self, names):
        aggregator = super()._aggregator(names)
        weighting = aggregator.weighting
        if self._pending_state is not None and self._pending_state["tasks"] == list(names):
            self._restore(weighting, self._pending_state)
        self._pending_state = None
        if weighting.step == 0:  # build the cvxpy problem now, to watch its solves
            weighting._init_optim_problem()
            weighting.step = 0.0
        if not getattr(weighting.prob, "_mtlseg_watched", False):
            self._watch(weighting)
        return aggregator

    def _watch(self, weighting) -> None:
        """Count every solve of the bargaining problem that raises or is not optimal; torchjd
        (like the reference code) would otherwise keep the previous alpha silently."""
        prob, solve = weighting.prob, weighting.prob.solve
        self._failed = False

        def watched_solve(*args, **kwargs):
            try:
                with warnings.catch_warnings():  # torchjd's problem is not DPP: no speed-up
                    warnings.filterwarnings("ignore", message=".*not DPP")
                    result = solve(*args, **kwargs)
            except Exception:
                self._failed = True
                raise
            if prob.status not in ("optimal", "optimal_inaccurate"):
                self._failed = True
            return result

        prob.solve = watched_solve
        prob._mtlseg_watched = True
        # torchjd only builds the problem at its step 0; keep it from rebuilding it
        weighting._init_optim_problem = lambda: None

    def check(self) -> None:
        failed, self._failed = getattr(self, "_failed", False), False
        if failed:
            self.failures += 1
            if self.cfg.on_failure == "error":
                raise TrainingError(
                    "Nash-MTL: the bargaining problem could not be solved (cvxpy/ECOS); "
                    "set weighting.params.on_failure=count to count failures and go on"
                )
        self.last["solver_failures"] = float(self.failures)

    @staticmethod
    def _restore(weighting, state) -> None:
        import numpy as np

        weighting.prvs_alpha = np.asarray(state["alpha"], dtype=np.float32)
        weighting.normalization_factor = np.asarray(state["norm"], dtype=np.float64).reshape(1)
        weighting._init_optim_problem()  # built with the restored alpha as its start
        weighting.step = float(state["step"])

    def get_extra_state(self):
        if self.aggregator is None:
            return self._pending_state or {}
        w = self.aggregator.weighting
        return {
            "tasks": list(self.aggregated),
            "alpha": torch.as_tensor(w.prvs_alpha).clone(),
            "norm": torch.as_tensor(w.normalization_factor).clone(),
            "step": float(w.step),
        }

    def set_extra_state(self, state) -> None:
        self._pending_state = dict(state) if state else None
        self.aggregator = None  # rebuilt with this state at the next step
