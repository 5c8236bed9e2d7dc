"""The resolution cap: what a perfect prediction made at a training size scores at the data's
own resolution.

A model trained on S x S slices predicts at S x S; its logits are resized back to each case's
size (bilinear, as ``mtlseg.engine.batched`` does) and decoded. A model that predicts its
training targets exactly (the label resized by the rule ``data.label_resize``) therefore
scores the Dice of ``perfect_prediction``; no training at that size can score above it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlseg.data.io import LOSSY_ENDINGS, file_ending
from mtlseg.data.resample import resize_labels
from mtlseg.metrics.cases import _masks, _read_mask, folder_classes
from mtlseg.metrics.segmentation import score_case, summarise


def perfect_prediction(truth: np.ndarray, size: int, rule: str, num_classes: int) -> np.ndarray:
    """Labels (Z, H, W) -> the labels a model predicting its S x S training targets exactly
    gives at (Z, H, W): each slice resized by ``rule``, one-hot, resized back bilinearly,
    argmax (the first class among ties, as the decoder)."""
    labels = torch.from_numpy(np.ascontiguousarray(truth)).long()
    small = resize_labels(labels, (size, size), rule)
    onehot = F.one_hot(small, num_classes).movedim(-1, 1).float()
    back = F.interpolate(onehot, size=labels.shape[1:], mode="bilinear", align_corners=False)
    return back.argmax(1).numpy()


def resolution_cap(
    truths: dict[str, np.ndarray], class_names: list[str], size: int, rule: str
) -> float:
    """Mean per-case Dice (mean over foreground classes, nnU-Net's empty-class convention)
    of the perfect prediction at ``size`` of every case of ``truths`` ({name: (Z, H, W)})."""
    rows = [
        {
            "case": name,
            **score_case(
                perfect_prediction(t, size, rule, len(class_names)),
                t,
                class_names,
                with_hd95=False,
            ),
        }
        for name, t in truths.items()
    ]
    return float(summarise(rows, class_names)["metrics"]["dice/mean"]["mean"])


def read_label_folder(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every mask or label volume of ``folder`` as (Z, H, W) class indices, and the class
    names (binary 0/255 or JPEG masks thresholded at 127, as training reads them)."""
    paths = _masks(folder)
    truths = {name: _read_mask(p)[0] for name, p in paths.items()}
    lossy = any(file_ending(p) in LOSSY_ENDINGS for p in paths.values())
    names, binary = folder_classes(None, truths, lossy)
    if binary:
        truths = {n: (t > 127).astype(np.int64) for n, t in truths.items()}
    return truths, names
