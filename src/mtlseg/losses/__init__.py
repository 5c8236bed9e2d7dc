"""Segmentation losses by registry name: (logits (B,K,H,W), labels (B,H,W)) -> scalar."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from mtlseg.registry import Registry

SEG_LOSSES: Registry[Callable[[], Callable]] = Registry("segmentation loss")


@SEG_LOSSES.register("ce")
def cross_entropy() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Categorical cross-entropy, the primary loss of paper 000 (eq. 1, L_ce)."""
    return F.cross_entropy


@SEG_LOSSES.register("dice-ce")
def dice_cross_entropy() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """MONAI's soft Dice + cross-entropy on softmax outputs."""
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    return lambda logits, labels: loss(logits, labels[:, None])
