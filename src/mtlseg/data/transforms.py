"""2D augmentation with albumentations, applied to (C, H, W) tensors and (H, W) masks."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch


class Augment2D:
    """Flips and a mild affine (scale, rotation, shift), the same on image and mask."""

    def __init__(self) -> None:
        self.pipeline = A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.Affine(
                    scale=(0.9, 1.1),
                    rotate=(-15, 15),
                    translate_percent=(-0.05, 0.05),
                    border_mode=0,
                    p=0.5,
                ),
            ]
        )

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(
            image=image.permute(1, 2, 0).numpy(), mask=mask.numpy().astype(np.uint8)
        )
        return (
            torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1).float(),
            torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
        )
