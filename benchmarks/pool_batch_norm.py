"""Does a semi-supervised run's batch norm tell its labelled images from the pool's?

    python benchmarks/pool_batch_norm.py runs/ssl/budget-7/unet-mean-teacher/seed0

Loads the run's last checkpoint and its data (the label budget and pool it trained with),
and prints (1) the validation Dice per class at the training size (slices pooled) with the
running statistics, with each batch's own statistics, and with the running statistics
re-estimated on labelled-only or on pool-only training batches; (2) per batch-norm layer,
how far apart the labelled and the pool rows of one training batch sit: the mean over
channels of |mean_labelled - mean_pool| / std, in network order. A labelled-only run shows
the same Dice in every row and separations near 0.05; a run whose deep layers separate the
two groups (0.5 and more) depends on the batch's mix, and its running statistics fit neither.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mtlseg.engine.data import prepare_data, train_loader
from mtlseg.engine.inference import load_module

BATCHES = 40  # training batches used to re-estimate the statistics


def dice_per_class(module, x: torch.Tensor, y: torch.Tensor, batch_stats: bool) -> list[float]:
    module.train(batch_stats)
    with torch.no_grad():
        pred = torch.cat(
            [module.model.segment(x[s : s + 32]).argmax(1) for s in range(0, len(x), 32)]
        )
    classes = range(1, len(module.class_names))
    return [
        (2 * ((pred == c) & (y == c)).sum() / ((pred == c).sum() + (y == c).sum())).item()
        for c in classes
    ]


def reestimate(module, loader, rows: str) -> None:
    """Running statistics from ``BATCHES`` training batches' labelled or pool rows alone."""
    for m in module.model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean over the batches
    module.train()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            keep = batch["labelled"] if rows == "labelled" else ~batch["labelled"]
            module.model.segment(batch["image"].float()[keep])
            if i + 1 == BATCHES:
                break


def separation(module, batch: dict) -> list[float]:
    rows = batch["labelled"]
    found: list[float] = []

    def hook(_m, inputs, _out):
        a = inputs[0]
        gap = (a[rows].mean((0, 2, 3)) - a[~rows].mean((0, 2, 3))).abs()
        found.append((gap / (a.std((0, 2, 3)) + 1e-5)).mean().item())

    norms = [m for m in module.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    handles = [m.register_forward_hook(hook) for m in norms]
    module.train()
    with torch.no_grad():
        module.model.segment(batch["image"].float())
    for h in handles:
        h.remove()
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="a run folder (checkpoints/last.ckpt)")
    p.add_argument("--batch", type=int, default=16, help="labelled and pool rows per batch")
    args = p.parse_args()
    module = load_module(args.run / "checkpoints" / "last.ckpt")
    data = prepare_data(module.cfg.data)
    val = data.val
    x = torch.stack([val[i]["image"] for i in range(len(val))]).float()
    y = torch.stack([val[i]["mask"] for i in range(len(val))]).long()
    names = module.class_names[1:]

    def show(label: str, scores: list[float]) -> None:
        per = " ".join(f"{n} {s:.3f}" for n, s in zip(names, scores, strict=True))
        print(f"{label:38s} mean {sum(scores) / len(scores):.3f}  {per}")

    show("running statistics (as evaluated)", dice_per_class(module, x, y, False))
    show("each validation batch's statistics", dice_per_class(module, x, y, True))
    loader = train_loader(data, args.batch, 0, 0, "shuffle", args.batch)
    first = next(iter(loader))
    for rows in ("labelled", "pool"):
        reestimate(module, loader, rows)
        show(f"re-estimated on {rows} rows", dice_per_class(module, x, y, False))
    gaps = separation(module, first)
    print("labelled/pool separation per BN layer:", " ".join(f"{g:.2f}" for g in gaps))


if __name__ == "__main__":
    main()
