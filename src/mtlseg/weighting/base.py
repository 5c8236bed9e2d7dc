"""The weighting contract: per-task losses -> one update, by registry name.

Two families share it. Loss weightings (``fixed``, ``uw``, ``dwa``, ...) return a weighted sum
and let autograd do the rest. Gradient methods (``nash-mtl``, ``pcgrad``, ...) also take over
``backward``: the engine always calls :meth:`Weighting.backward`, never branches on a name.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from mtlseg.config import typed
from mtlseg.registry import Registry

WEIGHTINGS: Registry[Any] = Registry("weighting", needs_config=True)  # Weighting classes

LIKELIHOODS = ("regression", "classification")


@dataclass
class BackwardContext:
    """What a gradient method may need beyond the losses, for one training step."""

    shared_params: Sequence[torch.Tensor]  # the backbone's (and FiLM's): every task reaches them
    task_params: Sequence[torch.Tensor]  # the task heads'
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # the backbone's, this step
    scale: float = 1.0  # the AMP loss scale ``backward`` applies (aggregators apply it themselves)
    shared_feature: str = "bottleneck"  # the backbone's feature every task depends on
    mixed_precision: bool = False  # the forward ran under a bf16/fp16 autocast
    # differentiates a scalar loss, scaled by ``scale`` (the engine's: AMP, DDP's reducer)
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward


C = TypeVar("C")  # a weighting's params: its Config dataclass


class Weighting(nn.Module, Generic[C]):
    """``weights(losses, step, epoch) -> {task: weight}``; forward returns the weighted sum.

    ``task_weights``: each loss's recipe weight; ``primary``: the segmentation task's name;
    ``likelihoods``: ``regression`` or ``classification`` per loss (uncertainty weighting).
    Stateful strategies keep their state in buffers or parameters of this module (or its
    ``extra_state``), so it is saved in checkpoints with the model.
    """

    Config: type = object
    # Under DDP, False: DDP's reducer averages the gradients during ``backward`` (the weights
    # are the same in every process: fixed by the step, learned parameters in the graph, or
    # state updated from loss values averaged by ``mean_over_processes``). True: ``backward``
    # reads gradients to decide the update (an aggregator's Jacobian, GradNorm's norms); the
    # engine switches DDP's reducer off, the method averages what it reads over the processes
    # (``average_over_processes``) and the engine then averages every ``.grad`` once
    syncs_gradients: bool = False
    # it needs the primary task's loss every step (GCS gates by its gradient)
    needs_primary_loss: bool = False
    # the losses without labels of their own (a consistency term on the pool: mean teacher,
    # DTC), set by ``build_weighting``; a method that judges losses by their labels' help to
    # the primary task (GCS) leaves them be unless told otherwise
    label_free: frozenset[str] = frozenset()

    def __init__(
        self,
        task_weights: dict[str, float],
        cfg: C,
        primary: str,
        likelihoods: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.task_weights = dict(task_weights)
        self.cfg: C = cfg
        self.primary = primary
        self.likelihoods = {n: (likelihoods or {}).get(n, "regression") for n in task_weights}
        self.last: dict[str, float] = {}  # what the last step logs (effective weights, ...)
        self.setup()

    def setup(self) -> None:
        """The method's own state (buffers, parameters) and checks of its settings, made
        once the common fields above are set; a subclass extends it, never ``__init__``."""

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        raise NotImplementedError

    def forward(
        self, losses: dict[str, torch.Tensor], step: int = 0, epoch: int = 0
    ) -> torch.Tensor:
        weights = self.weights(losses, step, epoch)
        self.last = {f"weight_{n}": float(w) for n, w in weights.items()}
        return reduce(operator.add, (weights[name] * loss for name, loss in losses.items()))

    def backward(
        self, losses: dict[str, torch.Tensor], total: torch.Tensor, ctx: BackwardContext
    ) -> None:
        """Fill the parameters' ``.grad`` for this step; ``total`` is forward's result. Loss
        weightings just differentiate it, by ``ctx.backward`` (which scales it under AMP)."""
        ctx.backward(total)

    def logs(self) -> dict[str, float]:
        """Values to log after the last step: ``weight_<task>`` and method-specific ones."""
        return dict(self.last)


def build_weighting(
    kind: str,
    params: dict[str, Any],
    task_weights: dict[str, float],
    primary: str,
    likelihoods: dict[str, str] | None = None,
    label_free: Sequence[str] = (),
) -> Weighting:
    """The weighting ``kind`` for these losses; ``label_free``: the losses that learn with
    no annotation (``Weighting.label_free``)."""
    cls = WEIGHTINGS.get(kind)
    cfg = typed(cls.Config, params, "weighting.params")  # its checks: ConfigError
    weighting = cls(task_weights, cfg, primary, likelihoods)
    weighting.label_free = frozenset(label_free)
    return weighting
