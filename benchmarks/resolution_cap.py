"""The resolution cap: per-case Dice of a perfect prediction made at each training size.

    python benchmarks/resolution_cap.py ../shared/data/acdc/labelsTr
    python benchmarks/resolution_cap.py ../shared/data/kvasir-seg/masks --sizes 64 128

For each size S and each label-resizing rule (``data.label_resize``): every label map is
resized to S x S slice by slice by the rule (what training learns), one-hot, resized back
to its own size bilinearly (as mtlseg resizes logits) and decoded by argmax, then scored
against the original: mean over cases of the mean Dice over foreground classes, nnU-Net's
convention for empty classes. No model trained at S on that rule can score above it.
``soft`` is the cap of soft targets (the resized indicators themselves, resized back): what
a loss taking soft targets could reach, for reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtlseg.data.resample import LABEL_RESIZE, resize_linear
from mtlseg.metrics.resolution import read_label_folder, resolution_cap
from mtlseg.metrics.segmentation import score_case, summarise


def soft_cap(truths: dict[str, np.ndarray], names: list[str], size: int) -> float:
    rows = []
    for name, t in truths.items():
        labels = torch.from_numpy(t).long()
        onehot = F.one_hot(labels, len(names)).movedim(-1, 1).float()
        small = resize_linear(onehot, (size, size))
        back = F.interpolate(small, size=labels.shape[1:], mode="bilinear", align_corners=False)
        rows.append({"case": name, **score_case(back.argmax(1), t, names, with_hd95=False)})
    return float(summarise(rows, names)["metrics"]["dice/mean"]["mean"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("labels", type=Path, help="a folder of label volumes (NIfTI) or masks")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128, 160, 256])
    p.add_argument("--rules", nargs="+", default=[*LABEL_RESIZE.names(), "soft"])
    args = p.parse_args()
    truths, names = read_label_folder(args.labels)
    print(f"{args.labels}: {len(truths)} cases, classes {', '.join(names)}")
    print(f"{'size':>5s} " + " ".join(f"{r:>14s}" for r in args.rules))
    for size in args.sizes:
        caps = [
            soft_cap(truths, names, size) if r == "soft" else resolution_cap(truths, names, size, r)
            for r in args.rules
        ]
        print(f"{size:5d} " + " ".join(f"{c:14.4f}" for c in caps), flush=True)


if __name__ == "__main__":
    main()
