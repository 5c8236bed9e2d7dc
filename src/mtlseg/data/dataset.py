"""In-memory 2D slice dataset: every slice resized once, served with its metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mtlseg.data.annotations import Annotations
from mtlseg.data.loading import NORMALIZATIONS, LoadedCase
from mtlseg.data.metadata import META_FIELDS, require_fields
from mtlseg.data.resample import resize_dense, resize_image, resize_slices

POSITION = META_FIELDS.index("position")


def model_input(image: np.ndarray, method: str, size: int) -> torch.Tensor:
    """(Z, H, W, C) raw image -> (Z, C, S, S) normalised as in training, resized to ``size``.

    The normalisation is per-channel affine and the antialiased bilinear resize is linear
    with weights summing to one, so resizing the raw image first gives the same input (to
    float rounding) at a fraction of the cost of normalising every full-size pixel.
    """
    offset, scale = (
        torch.from_numpy(v).float().view(1, -1, 1, 1) for v in NORMALIZATIONS.get(method)(image)
    )
    x = resize_image(image, size)
    return (x - offset) / scale


def intensity_range(image: np.ndarray) -> float:
    """The case's intensity range (max - min over every voxel and channel) in its normalised
    units: what min-max scaling to [0, 1] divides by (SSL4MIS's ACDC images), so a
    perturbation defined on that scale can be applied to any normalisation."""
    return float(np.ptp(image.astype(np.float32)))


class SliceDataset(Dataset):
    """2D samples: ``image`` (C,S,S), ``mask`` (S,S), ids and the slice's metadata.

    Each sample carries ``case_id``, ``patient_id``, ``slice_index``, ``num_slices``,
    ``intensity_range`` (the case's, ``intensity_range``), ``position``, ``meta``: a float vector over ``META_FIELDS`` (NaN where unknown), and
    ``labelled``: False for a case of the unlabelled pool, whose mask was never read (its
    ``mask`` is zeros, for batching; only label-free tasks and terms see such samples).
    Volumes are served slice by slice; a 2D image is a case with one slice. Images are kept
    as float16 after per-case normalisation to halve memory.

    With ``annotations``: ``labels`` ({column: class name, "" if missing}) when there is a
    labels file, ``box`` ((4,) normalised x1, y1, x2, y2, following the augmentation) and
    ``has_box`` when there is a box file.

    Cases with dense target arrays (NYUv2's depth and normals) give ``dense``: {name:
    (C, S, S)}, resized with nearest neighbours (a missing reading, 0, is never blended into
    its neighbours) and moved with the augmentation (``Augment2D``).

    Masks and dense arrays are resized on the images' pixel grid by ``label_resize``
    (``mtlseg.data.resample.LABEL_RESIZE``).
    """

    def __init__(
        self,
        cases: list[LoadedCase],
        image_size: int,
        augment: Callable | None = None,
        annotations: Annotations | None = None,
        label_resize: str = "linear",
    ) -> None:
        images: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        vectors: list[np.ndarray] = []
        self.meta: list[dict[str, Any]] = []
        dense: dict[str, list[torch.Tensor]] = {k: [] for k in (cases[0].dense if cases else {})}
        ann = annotations or Annotations()
        columns = ann.columns
        self.case_labels = (
            {
                c.case_id: {k: ann.labels.get(c.case_id, {}).get(k, "") for k in columns}
                for c in cases
            }
            if ann.labels_file
            else None
        )
        self.boxes = (
            {c.case_id: ann.boxes.get(c.case_id) for c in cases} if ann.boxes is not None else None
        )
        for case in cases:
            if case.label is None:  # the unlabelled pool: no mask was read; zeros stand in
                x = resize_image(case.image, image_size)
                y = torch.zeros(x.shape[0], image_size, image_size, dtype=torch.uint8)
            else:
                x, y = resize_slices(case.image, case.label, image_size, label_resize)
            images.append(x.half())
            masks.append(y)
            for name, array in case.dense.items():
                d = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
                dense[name].append(resize_dense(d, (image_size, image_size), label_resize))
            vectors.append(case.meta.slice_vectors())
            self.meta += [
                {
                    "case_id": case.case_id,
                    "patient_id": case.meta.patient_id,
                    "slice_index": z,
                    "num_slices": x.shape[0],
                    "labelled": case.label is not None,
                    "intensity_range": intensity_range(case.image),
                }
                for z in range(x.shape[0])
            ]
        self.images = torch.cat(images)
        self.masks = torch.cat(masks)
        self.meta_values = torch.from_numpy(np.concatenate(vectors))
        self.dense = {k: torch.cat(v) for k, v in dense.items()}
        self.augment = augment

    def __len__(self) -> int:
        return len(self.meta)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.images[i].float(), self.masks[i].long()
        case = self.meta[i]["case_id"]
        box = None if self.boxes is None else self.boxes[case]
        dense = {k: v[i] for k, v in self.dense.items()}
        if self.augment is not None and dense:
            image, mask, box, dense = self.augment(image, mask, box, dense)
        elif self.augment is not None:
            image, mask, box = self.augment(image, mask, box)
        meta = self.meta_values[i]
        sample = {
            "image": image,
            "mask": mask,
            **self.meta[i],
            "position": meta[POSITION],
            "meta": meta,
        }
        if dense:
            sample["dense"] = dense
        if self.case_labels is not None:
            sample["labels"] = self.case_labels[case]
        if self.boxes is not None:
            sample["has_box"] = box is not None
            sample["box"] = torch.tensor(
                box if box is not None else (0.0,) * 4, dtype=torch.float32
            )
        return sample

    @property
    def case_ids(self) -> list[str]:
        return [m["case_id"] for m in self.meta]

    def indices(self, labelled: bool) -> list[int]:
        """The samples of the labelled cases, or of the unlabelled pool."""
        return [i for i, m in enumerate(self.meta) if m["labelled"] == labelled]

    def require(self, fields: list[str], who: str, where: str) -> None:
        """Raise a DataError naming the cases for which one of ``fields`` is unknown."""
        require_fields(self.meta_values.numpy(), self.case_ids, fields, who, where)
