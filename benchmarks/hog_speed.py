"""Batched torch HOG vs scikit-image's ``hog`` per image: speed ratio and max abs difference.

    python benchmarks/hog_speed.py --data ../shared/data/kvasir-seg --n 256

Both sides compute the same descriptor (grey image at 256 px here, cells of 16, 8 bins,
one-cell L2-Hys blocks). Goal: torch >= 20x faster per image. The max abs difference is
printed for the float64 path (equality check) and the float32 path used in training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from skimage import io
from skimage.feature import hog

from mtlseg.targets.hog import HOGConfig, hog_descriptor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/kvasir-seg")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd (fused) HOG")
    args = p.parse_args()
    files = sorted((Path(args.data) / "images").iterdir())[: args.n]
    grey = np.stack([io.imread(f).astype(np.float64).mean(-1) / 255 for f in files])
    grey = grey[:, : args.size, : args.size]
    cfg = HOGConfig(resize=grey.shape[-1], cell=16, bins=8, norm="l2-hys")

    t = time.perf_counter()
    ref = np.stack(
        [
            hog(
                g,
                orientations=8,
                pixels_per_cell=(16, 16),
                cells_per_block=(1, 1),
                block_norm="L2-Hys",
            )
            for g in grey
        ]
    )
    t_ref = (time.perf_counter() - t) / len(grey)

    x32 = torch.from_numpy(grey).float()[:, None]
    hog_descriptor(x32[:8], cfg)  # warm-up
    t = time.perf_counter()
    ours32 = hog_descriptor(x32, cfg)
    t_ours = (time.perf_counter() - t) / len(grey)
    ours64 = hog_descriptor(torch.from_numpy(grey)[:, None], cfg)
    t_compiled = None
    if args.compile:
        fused = torch.compile(hog_descriptor, dynamic=False)
        fused(x32, cfg)  # compiles (tens of seconds), excluded
        t = time.perf_counter()
        fused(x32, cfg)
        t_compiled = (time.perf_counter() - t) / len(grey)

    print(
        f"{len(grey)} images {grey.shape[-1]}px, descriptor {ref.shape[1]} dims, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"scikit-image: {t_ref * 1e3:.2f} ms/image")
    print(
        f"mtlseg batched (float32, CPU): {t_ours * 1e3:.3f} ms/image  speed-up {t_ref / t_ours:.1f}x"
    )
    if t_compiled is not None:
        print(
            f"mtlseg torch.compile (float32, CPU): {t_compiled * 1e3:.3f} ms/image  "
            f"speed-up {t_ref / t_compiled:.1f}x"
        )
    print(
        f"max abs diff float64: {np.abs(ours64.numpy() - ref).max():.2e}   "
        f"float32: {np.abs(ours32.numpy() - ref).max():.2e}"
    )
    if torch.cuda.is_available():
        xg = x32.cuda()
        hog_descriptor(xg, cfg)
        torch.cuda.synchronize()
        t = time.perf_counter()
        hog_descriptor(xg, cfg)
        torch.cuda.synchronize()
        t_gpu = (time.perf_counter() - t) / len(grey)
        print(
            f"mtlseg batched (float32, CUDA): {t_gpu * 1e3:.4f} ms/image  speed-up {t_ref / t_gpu:.0f}x"
        )


if __name__ == "__main__":
    main()
