"""The gradient-aggregator family through torchjd: per-task gradients of the shared
parameters are combined into one update (Jacobian descent), while each head keeps its own
gradient. Each method is a subclass in a file of its own (``pcgrad.py``, ``nash_mtl.py``...)."""

from __future__ import annotations

import importlib.util
import operator
from dataclasses import dataclass
from functools import reduce
from typing import Any, TypeVar

import torch

from mtlseg.distributed import average_over_processes
from mtlseg.errors import ConfigError
from mtlseg.weighting.base import BackwardContext, Weighting


@dataclass
class AggregatorParams:
    parallel_chunk_size: int | None = None  # rows of the Jacobian per vmapped backward (None: all)


AP = TypeVar("AP", bound=AggregatorParams)


class AggregatorWeighting(Weighting[AP]):
    """Takes over ``backward``: one Jacobian of the (recipe-weighted) losses with respect to
    the shared parameters, by torchjd's ``autojac.backward`` (one vmapped backward pass per
    task at most), is aggregated by ``build_aggregator()`` into ``.grad``; the heads'
    parameters get the gradient of ``head_objective`` (torchjd's convention: the plain sum
    of the losses, i.e. each head its own task's gradient; Nash-MTL overrides it).

    The Jacobian is taken through the whole shared network, not at a cut of shared features
    (torchjd's ``mtl_backward``): our backbones hand heads nested features (decoder stages
    that feed later stages), where a feature cut would count some paths twice.

    Under mixed precision the Jacobian is taken one row at a time (K plain backward passes,
    the same numbers): torch's vmapped backward fails through norm layers run under autocast.

    Logged per step: each task's weight (``weight_<task>``, for aggregators that weight rows)
    and the cosine between each pair of task gradients (``cos_<a>-<b>``).

    Under DDP the Jacobian is averaged over the processes before it is aggregated (one
    all-reduce of K x P numbers): every process then aggregates the Jacobian of the whole
    batch, as one process would, rather than averaging per-process aggregates (the methods
    are not linear)."""

    Config = AggregatorParams
    syncs_gradients = True
    optional_modules: tuple[str, ...] = ()  # installed with mtlseg's extras
    extra: str = ""  # the pip extra that installs them

    def setup(self) -> None:
        super().setup()
        missing = [m for m in self.optional_modules if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"weighting: {type(self).__name__} needs {', '.join(missing)}, which are not "
                f'installed: pip install "mtlseg[{self.extra}]"'
            )
        self.aggregator = None
        self.aggregated: tuple[str, ...] = ()  # the tasks the aggregator was built for

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        raise NotImplementedError

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        # the value Lightning logs as train/loss; the update itself is made in backward
        return {n: self.task_weights[n] for n in losses}

    def _aggregator(self, names: tuple[str, ...]) -> Any:
        if self.aggregator is None or names != self.aggregated:
            # a new set of losses (a stage change) starts a stateful method afresh
            self.aggregated = names  # build_aggregator may read which row is which task
            aggregator = self.build_aggregator(len(names))
            aggregator.register_forward_pre_hook(self._observe)
            self.aggregator = aggregator
        return self.aggregator

    def _observe(self, module: Any, args: tuple[torch.Tensor, ...]) -> None:
        """Cosines between the task gradients, from the Jacobian the aggregator receives."""
        (matrix,) = args
        with torch.no_grad():
            unit = matrix / matrix.norm(dim=1, keepdim=True).clamp(min=1e-12)
            cos = unit @ unit.T
        names = self.aggregated
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                self.last[f"cos_{names[i]}-{names[j]}"] = float(cos[i, j])

    def backward(
        self, losses: dict[str, torch.Tensor], total: torch.Tensor, ctx: BackwardContext
    ) -> None:
        from torchjd.autojac import backward as jac_backward
        from torchjd.autojac import jac_to_grad

        names = tuple(losses)
        values = self._weighted(losses, ctx)
        self.last = {}
        # torchjd puts each parameter's Jacobian in a ``.jac`` attribute of its own
        shared: list[Any] = [p for p in ctx.shared_params if p.requires_grad]
        jac_backward(
            values,
            inputs=shared,
            retain_graph=True,  # the heads' backward follows
            # vmapped, it fails through norm layers run under autocast ("expected scalar type
            # BFloat16 but found Float"): then one row at a time (see the class docstring)
            parallel_chunk_size=1 if ctx.mixed_precision else self.cfg.parallel_chunk_size,
        )
        average_over_processes([p.jac for p in shared])  # pragma: no mutate (DDP only)
        # parameters no active loss reaches (a task's attention before its stage) get no
        # gradient, as with a plain backward, rather than a zero that Adam would step on
        unused = [p for p in shared if not p.jac.any()]
        if ctx.scale != 1.0:  # aggregate the unscaled Jacobian: methods that clip are not
            for p in shared:  # scale-invariant; AMP's unscale_ later divides .grad again
                p.jac = p.jac / ctx.scale
        weights = jac_to_grad(shared, self._aggregator(names))
        if ctx.scale != 1.0:
            for p in shared:
                if p.grad is not None:
                    p.grad = p.grad * ctx.scale
        for p in unused:
            p.grad = None
        if weights is not None:
            self.last.update(
                {f"weight_{n}": float(w) for n, w in zip(names, weights.flatten(), strict=True)}
            )
        self._backward_heads(values, ctx)
        self.check()

    def _weighted(
        self, losses: dict[str, torch.Tensor], ctx: BackwardContext
    ) -> list[torch.Tensor]:
        """The recipe-weighted (AMP-scaled) losses, in the order of ``losses``."""
        return [losses[n] * (self.task_weights[n] * ctx.scale) for n in losses]

    def head_objective(self, values: list[torch.Tensor]) -> torch.Tensor:
        """What the heads' gradient is taken of, after the shared update is decided: the sum
        of the (weighted) losses, so each head gets its own task's gradient."""
        return reduce(operator.add, values)

    def _backward_heads(self, values: list[torch.Tensor], ctx: BackwardContext) -> None:
        """The heads' gradient of ``head_objective`` (only the paths from the losses to the
        heads: cheap); the graph is freed."""
        heads = [p for p in ctx.task_params if p.requires_grad]
        if heads:
            torch.autograd.backward(self.head_objective(values), inputs=heads)

    def check(self) -> None:
        """Raise or count a failure of the aggregator's solver (Nash-MTL)."""
