"""Segmentation losses by registry name: (logits (B,K,H,W), target) -> scalar.

Each loss states its ``mode``: ``softmax`` losses take class indices (B, H, W);
``multilabel`` losses take one binary map per foreground class (B, K, H, W). Softmax
factories take ``ignore_index``: pixels of that class count in neither the cross-entropy nor
the Dice/IoU term (NYUv2's unlabelled pixels), as ``ignore_index`` does in torch's CE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, MaskedDiceLoss

from mtlseg.registry import Registry

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SegLoss:
    """A registered loss: its ``mode`` and the factory that makes it (``loss(**options)``)."""

    mode: str  # softmax: class indices | multilabel: one binary map per foreground class
    make: Callable[..., LossFn]

    def __call__(self, **options: Any) -> LossFn:
        return self.make(**options)


SEG_LOSSES: Registry[SegLoss] = Registry("segmentation loss")


def _loss(name: str, mode: str) -> Callable[[Callable[..., LossFn]], Callable[..., LossFn]]:
    def decorator(factory: Callable[..., LossFn]) -> Callable[..., LossFn]:
        SEG_LOSSES.register(name)(SegLoss(mode, factory))
        return factory

    return decorator


def _ce(ignore_index: int | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if ignore_index is None:
        return F.cross_entropy
    return lambda logits, labels: F.cross_entropy(logits, labels, ignore_index=ignore_index)


def _soft_overlap(
    ignore_index: int | None, jaccard: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """MONAI's soft Dice (or IoU) loss on softmax probabilities, ignored pixels masked out."""
    if ignore_index is None:
        loss = DiceLoss(to_onehot_y=True, softmax=True, jaccard=jaccard)
        return lambda logits, labels: loss(logits, labels[:, None])
    masked = MaskedDiceLoss(to_onehot_y=True, softmax=True, jaccard=jaccard)
    return lambda logits, labels: masked(
        logits, labels[:, None], mask=(labels != ignore_index)[:, None].to(logits.dtype)
    )


@_loss("ce", "softmax")
def cross_entropy(ignore_index: int | None = None) -> LossFn:
    """Categorical cross-entropy, the primary loss of paper 000 (eq. 1, L_ce)."""
    return _ce(ignore_index)


@_loss("dice-ce", "softmax")
def dice_cross_entropy(ignore_index: int | None = None) -> LossFn:
    """MONAI's soft Dice + cross-entropy on softmax outputs."""
    if ignore_index is None:
        loss = DiceCELoss(to_onehot_y=True, softmax=True)
        return lambda logits, labels: loss(logits, labels[:, None])
    ce, dice = _ce(ignore_index), _soft_overlap(ignore_index, jaccard=False)
    return lambda logits, labels: ce(logits, labels) + dice(logits, labels)


@_loss("ce-iou", "softmax")
def cross_entropy_iou(ignore_index: int | None = None) -> LossFn:
    """Paper 003 eq. (1): CE + (1 - soft IoU), the IoU term MONAI's Jaccard form of the
    soft Dice loss on softmax probabilities (per sample and class, then averaged)."""
    ce, iou = _ce(ignore_index), _soft_overlap(ignore_index, jaccard=True)
    return lambda logits, labels: ce(logits, labels) + iou(logits, labels)


@_loss("bce-dice", "multilabel")
def bce_dice() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Paper 001 eq. (1): 0.6 * BCE + 0.4 * soft Dice loss, per sigmoid channel.

    BCE is averaged over pixels and channels; MONAI's Dice loss (sigmoid, per sample and
    channel, then averaged) gives the 1 - 2|S∩Ŝ|/(|S|+|Ŝ|) term. Overlapping labels are fine.
    """
    dice = DiceLoss(sigmoid=True)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        return 0.6 * F.binary_cross_entropy_with_logits(logits, target) + 0.4 * dice(logits, target)

    return loss
