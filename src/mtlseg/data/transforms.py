"""2D augmentation pipelines (albumentations) by name, applied to (C, H, W) tensors and masks.

``data.augment`` picks one. Every call draws its random state from torch's generator, which
Lightning seeds from ``train.seed`` in the main process and per worker, so augmentation is
reproducible, differs between DataLoader workers, and does not depend on how many there are.
A preset returns (spatial, intensity) transforms. Intensity transforms of albumentations
assume [0, 1] floats and clip to it, while our images are z-scored, so they run on a copy
rescaled to [0, 1] per image and are mapped back to the image's own range afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np
import torch

from mtlseg.registry import Registry

Preset = tuple[list, list]  # (spatial transforms, intensity transforms)
AUGMENTATIONS: Registry[Callable[[], Preset]] = Registry("augmentation")


def _affine(scale: float | tuple[float, float], degrees: float, shift: float, p: float):
    """Random scale (1 +- scale, or a range), rotation and shift; zeros outside the image."""
    return A.Affine(
        scale=(1 - scale, 1 + scale) if isinstance(scale, float) else scale,
        rotate=(-degrees, degrees),
        translate_percent=(-shift, shift),
        border_mode=cv2.BORDER_CONSTANT,
        p=p,
    )


@AUGMENTATIONS.register("none")
def no_augmentation() -> Preset:
    return [], []


@AUGMENTATIONS.register("flips")
def flips() -> Preset:
    """Horizontal flips only (what a plain UNet script does)."""
    return [A.HorizontalFlip(p=0.5)], []


@AUGMENTATIONS.register("mild")
def mild() -> Preset:
    """Flips and a mild affine (scale 0.9-1.1, rotation 15 deg, shift 5 %): the pre-0.2 default."""
    return [A.HorizontalFlip(p=0.5), _affine(0.1, 15, 0.05, p=0.5)], []


@AUGMENTATIONS.register("strong")
def strong() -> Preset:
    """nnU-Net's 2D recipe in spirit (Isensee et al. 2021, suppl. "data augmentation"):
    rotation, scaling 0.7-1.4, flips; Gaussian noise and blur, brightness/contrast, gamma."""
    spatial = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), _affine((0.7, 1.4), 180, 0.1, p=0.7)]
    intensity = [  # on [0, 1]-rescaled images (module docstring)
        A.GaussNoise(std_range=(0.0, 0.03), p=0.15),
        A.GaussianBlur(sigma_limit=(0.5, 1.0), blur_limit=0, p=0.2),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.25, p=0.3),
        A.RandomGamma(gamma_limit=(70, 150), p=0.3),
    ]
    return spatial, intensity


class Augment2D:
    """One named pipeline, the same spatial transform on image and mask.

    ``image`` (C, H, W) float, ``mask`` (H, W) integer, optional ``box`` (x1, y1, x2, y2) in
    [0, 1] -> the augmented triple. A rotated box becomes the box of its rotated corners
    (albumentations); a box moved out of the image becomes None.
    """

    def __init__(self, name: str = "strong") -> None:
        self.name = name
        spatial, intensity = AUGMENTATIONS.get(name)()
        boxes = A.BboxParams(format="albumentations", label_fields=[], clip=True)
        self.spatial = A.Compose(spatial, bbox_params=boxes)
        self.intensity = A.Compose(intensity) if intensity else None

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, box=None):
        seed = int(torch.randint(2**31 - 1, ()))
        self.spatial.set_random_seed(seed)
        out = self.spatial(
            image=image.permute(1, 2, 0).numpy(),
            mask=mask.numpy().astype(np.uint8),
            bboxes=np.asarray([box] if box is not None else np.zeros((0, 4)), dtype=np.float32),
        )
        array = out["image"]
        if self.intensity is not None:
            self.intensity.set_random_seed(seed + 1)
            low, high = float(array.min()), float(array.max())
            scale = max(high - low, 1e-6)
            unit = ((array - low) / scale).astype(np.float32)
            array = self.intensity(image=unit)["image"] * scale + low
        boxes = out["bboxes"]
        return (
            torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float(),
            torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
            tuple(float(v) for v in boxes[0]) if len(boxes) else None,
        )


def build_augmentation(name: str) -> Augment2D | None:
    return None if name == "none" else Augment2D(name)
