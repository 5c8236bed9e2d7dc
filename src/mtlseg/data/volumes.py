"""In-memory 3D dataset (``data.dims: 3``): whole cases as (C, H, W, D) volumes.

Every case is resized in-plane to ``image_size`` once (its slices are kept, so 2D and 3D
runs see the same in-plane resolution). Training samples are random patches of
``patch_size`` (MONAI's SpatialPad + RandSpatialCrop: a volume thinner or smaller than the
patch is zero-padded, and this is logged once per dataset) with random flips along each
axis (paper 003's BRATS setting); validation samples are whole volumes.

Random states come from torch's generator, which Lightning seeds per worker, as the 2D
augmentation does.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from monai.transforms import Compose, RandFlipd, RandSpatialCropd, SpatialPadd
from torch.utils.data import Dataset

from mtlseg.data.annotations import Annotations
from mtlseg.data.dataset import intensity_range
from mtlseg.data.loading import LoadedCase
from mtlseg.data.resample import resize_slices
from mtlseg.errors import DataError

log = logging.getLogger(__name__)
KEYS = ("image", "mask")


class VolumeDataset(Dataset):
    """``image`` (C, S, S, D) float, ``mask`` (S, S, D) long, ``case_id``, ``patient_id``,
    ``intensity_range`` (``dataset.intensity_range``) and, with a labels file, ``labels``. ``patch_size`` (h, w, d): random training patches;
    None: whole volumes (validation, evaluation). Masks are resized in-plane on the images'
    grid by ``label_resize`` (``mtlseg.data.resample``)."""

    def __init__(
        self,
        cases: list[LoadedCase],
        image_size: int,
        patch_size: list[int] | None = None,
        augment: bool = False,
        annotations: Annotations | None = None,
        label_resize: str = "linear",
    ) -> None:
        ann = annotations or Annotations()
        self.case_labels = (
            {
                c.case_id: {k: ann.labels.get(c.case_id, {}).get(k, "") for k in ann.columns}
                for c in cases
            }
            if ann.labels_file
            else None
        )
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        self.meta: list[dict[str, Any]] = []
        for case in cases:
            if case.label is None:
                raise DataError(f"{case.image_file}: 3D training needs every case's mask")
            x, y = resize_slices(
                case.image, case.label, image_size, label_resize
            )  # (Z, C, S, S), (Z, S, S)
            self.images.append(x.permute(1, 2, 3, 0).half().contiguous())
            self.masks.append(y.permute(1, 2, 0).contiguous())
            self.meta.append(
                {
                    "case_id": case.case_id,
                    "patient_id": case.meta.patient_id,
                    "intensity_range": intensity_range(case.image),
                }
            )
        self.patch_size = list(patch_size) if patch_size else None
        self.transform = None
        if self.patch_size:
            small = [
                m["case_id"]
                for m, v in zip(self.meta, self.masks, strict=True)
                if any(s < p for s, p in zip(v.shape, self.patch_size, strict=True))
            ]
            if small:
                log.info(
                    "%d of %d volumes are smaller than the patch %s (e.g. %s): zero-padded",
                    len(small),
                    len(self.meta),
                    self.patch_size,
                    small[0],
                )
            flips = [RandFlipd(KEYS, prob=0.5, spatial_axis=a) for a in range(3)] if augment else []
            self.transform = Compose(
                [
                    SpatialPadd(KEYS, spatial_size=self.patch_size),
                    RandSpatialCropd(KEYS, roi_size=self.patch_size, random_size=False),
                    *flips,
                ]
            )

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.images[i].float(), self.masks[i].long()
        if self.transform is not None:
            self.transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ())))
            out = self.transform({"image": image, "mask": mask[None]})
            image, mask = _tensor(out["image"]), _tensor(out["mask"])[0].long()
        sample = {"image": image, "mask": mask, **self.meta[i]}
        if self.case_labels is not None:
            sample["labels"] = self.case_labels[self.meta[i]["case_id"]]
        return sample

    @property
    def case_ids(self) -> list[str]:
        return [m["case_id"] for m in self.meta]


def _tensor(x: Any) -> torch.Tensor:
    """A plain tensor from MONAI's MetaTensor (collation and pickling stay cheap)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)
