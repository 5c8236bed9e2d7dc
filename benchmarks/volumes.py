"""3D training-step time and peak memory for one patch size, and 2D vs 3D inference speed on
whole ACDC volumes.

    python benchmarks/volumes.py --data ../shared/data/acdc
    python benchmarks/volumes.py --data ../shared/data/acdc --patch 128 128 8 --batch 2 \
        --recipe-3d unet3d --recipe-2d unet --size 128

Training: real patches from the recipe's own loader, forward + backward + Adam, median of
``--steps`` after 3 warm-up steps; peak memory is the process's peak RSS (the dataset
included) and its growth over the timed steps (CUDA: torch's peak allocation).
Inference: the same untrained networks on every validation volume (speed only): the 2D
recipe slice by slice (batches of 16 slices), the 3D recipe by sliding-window inference
over ``--patch`` windows; both report slices/s and voxels/s of the resized volume.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from mtlseg.engine.data import prepare_data, train_loader
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.step import Optimisation
from mtlseg.engine.train import build_module
from mtlseg.settings import load_config


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _module(recipe: str, data, overrides: list[str], device: str) -> MultiTaskModule:
    cfg = load_config(recipe, [f"data.path={data.index.root}", *overrides])
    return build_module(cfg, data).to(device)  # the builder train uses, with its checks


def train_step(module, data, batch: int, steps: int, device: str) -> tuple[float, float, float]:
    """(median s/step, peak RSS MiB, RSS growth MiB over the timed steps)."""
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    loader = iter(train_loader(data, batch, 0, 0))
    batches = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(loader).items()}
        for _ in range(3)
    ]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before, times = _peak_rss_mb(), []
    for i in range(steps + 3):
        _sync(device)
        t = time.perf_counter()
        module.train_step(batches[i % 3], i, Optimisation(opt))
        _sync(device)
        if i >= 3:
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _peak_rss_mb()
    return sorted(times)[len(times) // 2], peak, _peak_rss_mb() - before


@torch.no_grad()
def inference(module, volumes: list[torch.Tensor], device: str, slicewise: bool):
    """(slices/s, voxels/s) over whole (C, S, S, Z) volumes."""
    module.eval()
    slices = voxels = 0
    start = time.perf_counter()
    for v in volumes:
        v = v.float().to(device)
        if slicewise:
            x = v.permute(3, 0, 1, 2)  # (Z, C, S, S)
            for i in range(0, len(x), 16):
                module.predict_labels(x[i : i + 16])
        else:
            module.predict_labels(v[None])
        slices += v.shape[-1]
        voxels += v[0].numel()
    _sync(device)
    elapsed = time.perf_counter() - start
    return slices / elapsed, voxels / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--recipe-3d", default="unet3d")
    p.add_argument("--recipe-2d", default="unet")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--patch", type=int, nargs=3, default=[128, 128, 8])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--volumes", type=int, default=10, help="validation volumes to infer")
    p.add_argument("--set", action="append", default=[], help="override for the 3D recipe")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    common = [f"data.image_size={args.size}", "data.augment=none", "data.num_workers=0"]
    three = [*common, f"data.patch_size={list(args.patch)}", *args.set]
    cfg = load_config(args.recipe_3d, [f"data.path={args.data}", *three])
    data = prepare_data(cfg.data)
    print(
        f"device {device}, threads {torch.get_num_threads()}, {len(data.train)} train / "
        f"{len(data.val)} val volumes at {args.size} px in-plane, patch {args.patch}, "
        f"batch {args.batch}"
    )
    module = _module(args.recipe_3d, data, three, device)
    t, peak, growth = train_step(module, data, args.batch, args.steps, device)
    voxels = args.batch * args.patch[0] * args.patch[1] * args.patch[2]
    print(
        f"train {args.recipe_3d}: {t * 1000:.0f} ms/step, {voxels / t / 1e6:.2f} M voxels/s, "
        f"peak memory {peak:.0f} MiB ({'CUDA' if device == 'cuda' else 'RSS'}; "
        f"+{growth:.0f} MiB during the steps)"
    )
    volumes = data.val.images[: args.volumes]
    flat = _module(args.recipe_2d, data, [*common, "data.dims=2"], device)
    for name, mod, slicewise in ((args.recipe_2d, flat, True), (args.recipe_3d, module, False)):
        per_slice, per_voxel = inference(mod, volumes, device, slicewise)
        print(
            f"inference {name:12s} ({'2D slices' if slicewise else '3D sliding window'}): "
            f"{per_slice:7.1f} slices/s  {per_voxel / 1e6:6.2f} M voxels/s "
            f"over {len(volumes)} volumes"
        )


if __name__ == "__main__":
    main()
