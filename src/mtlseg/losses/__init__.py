"""Segmentation losses by registry name: (logits (B,K,H,W), target) -> scalar.

Each loss states its ``mode``: ``softmax`` losses take class indices (B, H, W);
``multilabel`` losses take one binary map per foreground class (B, K, H, W).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from mtlseg.registry import Registry

SEG_LOSSES: Registry[Callable[[], Callable]] = Registry("segmentation loss")


def _loss(name: str, mode: str):
    def decorator(factory: Callable) -> Callable:
        factory.mode = mode
        return SEG_LOSSES.register(name)(factory)

    return decorator


@_loss("ce", "softmax")
def cross_entropy() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Categorical cross-entropy, the primary loss of paper 000 (eq. 1, L_ce)."""
    return F.cross_entropy


@_loss("dice-ce", "softmax")
def dice_cross_entropy() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """MONAI's soft Dice + cross-entropy on softmax outputs."""
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    return lambda logits, labels: loss(logits, labels[:, None])


@_loss("ce-iou", "softmax")
def cross_entropy_iou() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Paper 003 eq. (1): CE + (1 - soft IoU), the IoU term MONAI's Jaccard form of the
    soft Dice loss on softmax probabilities (per sample and class, then averaged)."""
    iou = DiceLoss(to_onehot_y=True, softmax=True, jaccard=True)
    return lambda logits, labels: F.cross_entropy(logits, labels) + iou(logits, labels[:, None])


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
