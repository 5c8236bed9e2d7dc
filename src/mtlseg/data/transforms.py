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
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from mtlseg.errors import DataError
from mtlseg.registry import Registry

Preset = tuple[list, list]  # (spatial transforms, intensity transforms)
AUGMENTATIONS: Registry[Callable[[], Preset]] = Registry("augmentation")

# How a dense target array (C, H, W) follows the spatial transform. Every kind is resampled
# with nearest neighbours (0 = no reading stays unblended) and zero-filled outside the image.
DENSE_KINDS = {
    "scalar": "values unchanged",
    "depth": "divided by the zoom factor (zooming in by s brings the scene s times closer, as "
    "the MTAN authors' random scale crop does)",
    "vector": "channels 0 and 1 are the x and y components: negated by horizontal and vertical "
    "flips; rotation is refused (the y axis convention of such files is not known)",
}


def _affine(scale: float | tuple[float, float], degrees: float, shift: float, p: float) -> A.Affine:
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


@AUGMENTATIONS.register("scale-flip")
def scale_flip() -> Preset:
    """The MTAN authors' NYUv2 augmentation (paper 004's setting): random zoom-in by 1.0-1.5
    at a random position, and horizontal flips. No rotation, so surface normals stay valid."""
    zoom = A.Affine(scale=(1.0, 1.5), translate_percent=(-0.15, 0.15), rotate=0, p=1.0)
    return [A.HorizontalFlip(p=0.5), zoom], []


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


def rotates(name: str) -> bool:
    """Whether the preset ``name`` may rotate images (not allowed with vector targets)."""
    spatial, _ = AUGMENTATIONS.get(name)()
    for t in spatial:
        angle = getattr(t, "rotate", None) or getattr(t, "limit", None)
        if isinstance(t, A.Affine | A.Rotate | A.RandomRotate90) and angle != (0, 0):
            return True
    return False


class Augment2D:
    """One named pipeline, the same spatial transform on image, mask and dense targets.

    ``image`` (C, H, W) float, ``mask`` (H, W) integer, optional ``box`` (x1, y1, x2, y2) in
    [0, 1], optional ``dense`` {name: (C, H, W)} -> the augmented (image, mask, box[, dense]).
    A rotated box becomes the box of its rotated corners (albumentations); a box moved out of
    the image becomes None. Dense targets follow their kind in ``dense_kinds``
    (``DENSE_KINDS``).
    """

    def __init__(self, name: str = "strong", dense_kinds: dict[str, str] | None = None) -> None:
        self.name, self.dense_kinds = name, dict(dense_kinds or {})
        unknown = sorted(set(self.dense_kinds.values()) - set(DENSE_KINDS))
        if unknown:
            raise ValueError(f"dense target kind {unknown[0]!r}; known: {', '.join(DENSE_KINDS)}")
        if "vector" in self.dense_kinds.values() and rotates(name):
            raise DataError(
                f"data.augment={name} rotates images, and the dataset's vector targets "
                f"({', '.join(k for k, v in self.dense_kinds.items() if v == 'vector')}) cannot "
                "follow a rotation; use data.augment=scale-flip, flips or none"
            )
        spatial, intensity = AUGMENTATIONS.get(name)()
        boxes = A.BboxParams(format="albumentations", label_fields=[], clip=True)
        self.spatial = A.Compose(
            spatial,
            bbox_params=boxes,
            additional_targets={f"dense_{k}": "mask" for k in self.dense_kinds},
            save_applied_params=bool(self.dense_kinds),
        )
        self.intensity = A.Compose(intensity) if intensity else None

    def __call__(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        box: torch.Tensor | None = None,
        dense: dict[str, torch.Tensor] | None = None,
    ) -> tuple[Any, ...]:
        seed = int(torch.randint(2**31 - 1, ()))
        self.spatial.set_random_seed(seed)
        dense = dense or {}
        out = self.spatial(
            image=image.permute(1, 2, 0).numpy(),
            mask=mask.numpy().astype(np.uint8),
            bboxes=np.asarray([box] if box is not None else np.zeros((0, 4)), dtype=np.float32),
            **{f"dense_{k}": v.permute(1, 2, 0).numpy() for k, v in dense.items()},
        )
        array = out["image"]
        if self.intensity is not None:
            self.intensity.set_random_seed(seed + 1)
            low, high = float(array.min()), float(array.max())
            scale = max(high - low, 1e-6)
            unit = ((array - low) / scale).astype(np.float32)
            array = self.intensity(image=unit)["image"] * scale + low
        boxes = out["bboxes"]
        result = (
            torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float(),
            torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
            tuple(float(v) for v in boxes[0]) if len(boxes) else None,
        )
        if not dense:
            return result
        applied = out.get("applied_transforms", [])
        moved = {k: self._follow(k, np.atleast_3d(out[f"dense_{k}"]), applied) for k in dense}
        return (*result, moved)

    def _follow(self, name: str, array: np.ndarray, applied: Any) -> torch.Tensor:
        """(H, W, C) resampled dense array -> (C, H, W) with its values transformed too."""
        t = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
        kind = self.dense_kinds.get(name, "scalar")
        for transform, params in applied:
            if kind == "vector" and transform in ("HorizontalFlip", "VerticalFlip"):
                t[0 if transform == "HorizontalFlip" else 1] *= -1
            elif kind == "depth" and "matrix" in params:
                zoom = float(np.sqrt(abs(np.linalg.det(np.asarray(params["matrix"])[:2, :2]))))
                t = t / zoom
        return t


def build_augmentation(name: str, dense_kinds: dict[str, str] | None = None) -> Augment2D | None:
    return None if name == "none" else Augment2D(name, dense_kinds)
