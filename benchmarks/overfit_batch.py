"""Can a recipe's network fit one batch? The first check when a model does not learn.

    python benchmarks/overfit_batch.py --recipe segnet --data ../shared/data/acdc \
        --set model.params.widths=[8,16,32,64,64]
    python benchmarks/overfit_batch.py --recipe segnet --data ../shared/data/acdc \
        --set model.params.widths=[32,64,128,256,256]

Trains on one fixed batch of the training split (no augmentation) with Adam and prints the
loss and the foreground Dice of that batch (pixels pooled over the batch, mean over classes; train mode, full-size output) every
``--every`` steps. A network that cannot fit 16 images will not learn the dataset.
"""

from __future__ import annotations

import argparse

import torch

from mtlseg.engine.data import prepare_data, train_loader
from mtlseg.engine.step import Optimisation
from mtlseg.engine.train import build_module
from mtlseg.metrics.segmentation import confusion_counts, pooled_scores
from mtlseg.settings import load_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="unet")
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--every", type=int, default=50)
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's train.lr")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    torch.manual_seed(0)
    overrides = [f"data.path={args.data}", f"data.image_size={args.size}", "data.augment=none"]
    cfg = load_config(args.recipe, [*overrides, *args.set])
    data = prepare_data(cfg.data)
    module = build_module(cfg, data).train()  # the builder train uses, with its checks
    opt = torch.optim.Adam(module.parameters(), lr=args.lr or cfg.train.lr)
    batch = next(iter(train_loader(data, args.batch, 0, 0, cfg.train.sampler)))
    for step in range(1, args.steps + 1):
        loss = module.train_step(batch, step, Optimisation(opt)).total
        if step % args.every == 0:
            with torch.no_grad():
                logits = module.model(batch["image"])["segmentation"]
            counts = confusion_counts(logits.argmax(1), batch["mask"], logits.shape[1])
            dice = pooled_scores(*(c.sum(0) for c in counts))["f1/mean"]  # pooled over the batch
            print(f"step {step}: loss {loss.item():.3f}, foreground Dice {dice:.3f}")


if __name__ == "__main__":
    main()
