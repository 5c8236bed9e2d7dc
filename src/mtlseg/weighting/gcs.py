"""Gradient cosine similarity (Du et al. 2018, "Adapting auxiliary losses using gradient
similarity"): an auxiliary loss's gradient on the shared parameters is used only when it
agrees with the primary task's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torchjd.aggregation import WeightedAggregator, Weighting
from torchjd.linalg import Matrix

from mtlseg.weighting.aggregator import AggregatorParams, AggregatorWeighting
from mtlseg.weighting.base import WEIGHTINGS


@dataclass
class GCSParams(AggregatorParams):
    # False: an auxiliary gradient counts fully when cos > 0 (Du et al.'s Algorithm 1);
    # True: scaled by max(0, cos) (their weighted variant)
    weighted: bool = False
    # gate the losses without labels of their own (consistency terms on the pool) too; by
    # default they always count: their gradient disagrees with the labelled loss's by
    # design, so gating them removes what the pool adds
    gate_label_free: bool = False


def similarity_weights(
    matrix: torch.Tensor, primary: int, weighted: bool, always: tuple[int, ...] = ()
) -> torch.Tensor:
    """(K, P) task gradients -> (K,) weights: 1 for the primary row and the rows of
    ``always``; for each other row 1 (or its cosine, ``weighted``) where its cosine with
    the primary gradient is positive, else 0. The cosine is over all shared parameters at
    once."""
    g = matrix[primary]
    cos = (matrix @ g) / (matrix.norm(dim=1) * g.norm()).clamp(min=1e-12)
    weights = torch.where(cos > 0, cos if weighted else torch.ones_like(cos), 0.0)
    weights[[primary, *always]] = 1.0
    return weights


class _Similarity(Weighting[Matrix]):
    """A torchjd ``Weighting`` of the Jacobian's rows (``similarity_weights``)."""

    def __init__(self, primary: int, weighted: bool, always: tuple[int, ...]) -> None:
        super().__init__()
        self.primary, self.weighted, self.always = primary, weighted, always

    def forward(self, stat: Matrix, /) -> torch.Tensor:
        return similarity_weights(stat, self.primary, self.weighted, self.always)


@WEIGHTINGS.register("gcs")
class GCSWeighting(AggregatorWeighting[GCSParams]):
    """Du et al. 2018, Algorithm 1 (and its weighted variant): the shared parameters get
    g_primary + sum_k [cos(g_k, g_primary) > 0] g_k (or max(0, cos) g_k); each head its own
    task's gradient (torchjd's convention). Du et al. gate auxiliary tasks with labels of
    their own; a loss without (a consistency term on the unlabelled pool) always counts
    unless ``gate_label_free: true``: gating it by its agreement with the labelled loss
    removes what the pool adds (38-49 % of steps gated for DTC's term on ACDC, issue 21). The auxiliary gradients g_k are the rows of the
    Jacobian of the (recipe-weighted) losses, so under DDP the cosine is that of the whole
    batch (the Jacobian is averaged before it is used). Logged per auxiliary loss:
    ``gated_<task>``, the share of steps so far whose gradient was left out."""

    Config = GCSParams
    needs_primary_loss = True
    gated: torch.Tensor  # (K,) steps each loss was left out
    steps: torch.Tensor

    def setup(self) -> None:
        super().setup()
        self.all_names = list(self.task_weights)
        self.register_buffer("gated", torch.zeros(len(self.all_names), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def build_aggregator(self, n_tasks: int) -> Any:  # a torchjd Aggregator
        primary = self.aggregated.index(self.primary)
        always = () if self.cfg.gate_label_free else self._kept()
        return WeightedAggregator(_Similarity(primary, self.cfg.weighted, always))

    def _kept(self) -> tuple[int, ...]:
        """The rows never gated: the label-free losses (``Weighting.label_free``)."""
        return tuple(i for i, n in enumerate(self.aggregated) if n in self.label_free)

    def check(self) -> None:
        """After each aggregation: count and log which auxiliary losses were left out."""
        weights = {n[len("weight_") :]: w for n, w in self.last.items() if n.startswith("weight_")}
        self.steps += 1
        for name, w in weights.items():
            index = self.all_names.index(name)
            if name != self.primary:
                self.gated[index] += int(w == 0.0)
                self.last[f"gated_{name}"] = float(self.gated[index]) / float(self.steps)
