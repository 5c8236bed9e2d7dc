"""Labelled and pool rows of a training batch: selecting them, and the forward that keeps
them apart in batch norm. Every batch and every model output is batch-first."""

from __future__ import annotations

from typing import Any

import torch

from mtlseg.models import MultiTaskModel


def select_rows(value: Any, rows: torch.Tensor) -> Any:
    """``value`` (a batch or the model's outputs: tensors, lists, dicts of them) restricted to
    the samples where ``rows`` (B,) is true: dim 0 of tensors and lists of length B."""
    n = rows.shape[0]
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[rows]
    if isinstance(value, dict):
        return {k: select_rows(v, rows) for k, v in value.items()}
    if isinstance(value, list) and len(value) == n:
        keep = rows.tolist()
        return [v for v, k in zip(value, keep, strict=True) if k]
    return value


def merge_rows(first: Any, second: Any, inverse: torch.Tensor) -> Any:
    """The outputs of two row groups put back in batch order (``inverse``: the batch position
    of each row of ``first`` then ``second``, argsorted); the inverse of ``select_rows``.
    Tensors are joined on dim 0, their batch axis."""
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        if first.shape[0] + second.shape[0] != len(inverse):
            raise ValueError(
                f"outputs of shapes {tuple(first.shape)} and {tuple(second.shape)} are not "
                f"batch-first: their first sizes do not add up to the batch's {len(inverse)}"
            )
        return torch.cat([first, second]).index_select(0, inverse.to(first.device))
    if isinstance(first, dict):
        return {k: merge_rows(v, second[k], inverse) for k, v in first.items()}
    if isinstance(first, list) and len(first) + len(second) == len(inverse):
        items = [*first, *second]
        return [items[i] for i in inverse.tolist()]
    if isinstance(first, list):  # a list of per-row tensors (e.g. side outputs)
        return [merge_rows(a, b, inverse) for a, b in zip(first, second, strict=True)]
    return first


class PoolForward:
    """The training forward of a batch that mixes labelled and pool rows.

    ``separate`` (default) runs the labelled rows and the pool's rows as two batches, so batch
    norm never normalises one with the other's statistics; ``joint`` (SSL4MIS's way) runs them
    as one batch, which lets the network set the labelled rows apart in its deep batch-norm
    layers (docs/archive.md, "Batch norm and the pool")."""

    def __init__(self, mode: str = "separate") -> None:
        self.mode = mode

    def __call__(
        self, model: MultiTaskModel, x: torch.Tensor, batch: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        labelled = batch.get("labelled")
        meta = batch.get("meta")
        if (
            self.mode == "joint"
            or labelled is None
            or bool(labelled.all())
            or not bool(labelled.any())
        ):
            return model.forward_with_features(x, meta)
        parts = [
            model.forward_with_features(
                x[rows], meta[rows] if isinstance(meta, torch.Tensor) else meta
            )
            for rows in (labelled, ~labelled)
        ]
        order = torch.cat([labelled.nonzero()[:, 0], (~labelled).nonzero()[:, 0]])
        inverse = torch.argsort(order)
        return (
            merge_rows(parts[0][0], parts[1][0], inverse),
            merge_rows(parts[0][1], parts[1][1], inverse),
        )
