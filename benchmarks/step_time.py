"""Training-step time of a multi-task recipe vs its single-task baseline, in one process.

    python benchmarks/step_time.py --data ../shared/data/kvasir-seg --size 128 --steps 30
    python benchmarks/step_time.py --data ../shared/data/acdc --size 64 --batch 32 \
        --recipes small-unet small-unet-position small-unet-contrastive small-unet-film big-unet
    python benchmarks/step_time.py --data ../shared/data/acdc --recipes segnet segnet-3task \
        mtan-3task --set model.params.widths=[16,32,64,128,128]          # paper 002
    python benchmarks/step_time.py --data ../shared/data/kvasir-seg --recipes segnet \
        mtan-no-class mtan-canny mtan-colour --set tasks.1.enabled=false \
        --set model.params.widths=[16,32,64,128,128]
    python benchmarks/step_time.py --data ../shared/data/acdc --size 96 --batch 16 \
        --label-budget 7 --recipes unet unet-mean-teacher unet-dtc unet-bcp unet-hog  # issue 21

Prints seconds per step for each recipe and the ratio (goal for unet-hog / unet: <= 1.10).
Real batches from the recipe's own train loader (pair batches for the contrastive recipe);
forward + backward + Adam step, as in training (HOG targets included, computed on the same
device). ``--set`` overrides apply to every recipe (e.g. narrower widths). Uses CUDA + mixed precision when present.
Also prints the share of the step spent making targets on device (HOG, Canny, LAB, boxes).

``--label-budget`` keeps that many training patients labelled (``data.label_budget``) and
the rest as the pool: each recipe then draws its batches as training does (``--batch``
labelled samples, and an unlabelled batch of the same size when some task or term learns
from the pool), its EMA teacher is updated after every step, and staged recipes are timed
in their last stage (BCP's self-training). Goal for the semi-supervised recipes against
labelled-only ``unet``: <= 2.5x (the student on twice the images plus the teacher's
forward).
"""

from __future__ import annotations

import argparse
import time

import torch

from mtlseg.engine.data import prepare_data
from mtlseg.engine.step import Optimisation
from mtlseg.engine.train import build_module, loaders
from mtlseg.settings import load_config


def _to(batch: dict, device: str) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def target_time(module, batch: dict, device: str, repeats: int = 10) -> float:
    """Median seconds to make every task's target for ``batch`` (no model involved)."""
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for task in module.tasks:
            task.target(batch)
        _sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def time_steps(
    recipe: str, data, size: int, steps: int, batch: int, device: str, amp: bool, overrides
) -> tuple[float, float, int]:
    """(median seconds per training step, median seconds of target making per step, images
    per step)."""
    cfg = load_config(
        recipe,
        [f"data.image_size={size}", f"data.path={data.index.root}", *overrides]
        + [f"train.batch_size={batch}", "data.num_workers=0"],
    )
    module = build_module(cfg, data).to(device)  # the builder train uses, with its checks
    opt = torch.optim.Adam([q for q in module.parameters() if q.requires_grad], lr=2e-4)
    loader = iter(loaders(cfg, data)[0])  # train's batches: with the pool's when it uses it
    batches = [_to(next(loader), device) for _ in range(4)]
    last = 10**9  # a step in the last stage (stages given as fractions count steps here)
    times = []
    for i in range(steps + 5):
        b = batches[i % 4]
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.float16, enabled=amp):
            module.train_step(b, last + i if cfg.train.stages else i, Optimisation(opt))
        _sync(device)
        if i >= 5:  # warm-up excluded
            times.append(time.perf_counter() - t)
    times.sort()
    # median: robust to a noisy machine
    images = batches[0]["image"].shape[0]
    return times[len(times) // 2], target_time(module, batches[0], device), images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/kvasir-seg")
    p.add_argument("--recipes", nargs="+", default=["unet", "unet-hog"])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--set", action="append", default=[], help="recipe override for all")
    p.add_argument("--label-budget", help="data.label_budget: the rest of the split is the pool")
    args = p.parse_args()
    if args.label_budget is not None:
        args.set = [*args.set, f"data.label_budget={args.label_budget}"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    amp = device == "cuda"
    cfg = load_config(
        args.recipes[0], [f"data.image_size={args.size}", f"data.path={args.data}", *args.set]
    )
    cfg.data.augment = "none"
    if args.label_budget is None:
        cfg.data.split_mode = "case"  # any split: only training batches are timed
    data = prepare_data(cfg.data)
    print(
        f"device {device} (mixed precision: {amp}), threads {torch.get_num_threads()}, "
        f"image {args.size}px, batch {args.batch}, median of {args.steps} steps"
    )
    base = None
    for recipe in args.recipes:
        t, targets, images = time_steps(
            recipe, data, args.size, args.steps, args.batch, device, amp, args.set
        )
        base = base or t
        print(
            f"{recipe:24s} {t * 1000:8.1f} ms/step   ratio vs {args.recipes[0]}: {t / base:.3f}"
            f"   {images:3d} images/step   targets {100 * targets / t:4.1f} % of the step"
        )


if __name__ == "__main__":
    main()
