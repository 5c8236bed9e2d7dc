"""Validation Dice reached by a recipe within a wall-clock training budget, and its speed.

    python benchmarks/quality_budget.py --recipe unet --data ../shared/data/acdc --minutes 10 30
    python benchmarks/quality_budget.py --recipe unet --data ../shared/data/acdc --minutes 5 \
        --inner-split --set train.lr=3e-3      # tune on held-out *training* patients

Trains with ``train.max_minutes`` (the schedule anneals over the budget), then evaluates the
best checkpoint (by validation Dice) and the final one. Prints, per budget: optimiser steps,
training images/s, the share of the training time spent waiting for data, slice-wise and
per-volume mean Dice. ``--inner-split`` holds out a seeded 20 % of the *training* patients
as validation and never reads the official val split: use it to choose settings, and the
plain run to report them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mtlseg.data.splits import seeded_patient_split
from mtlseg.engine.data import prepare_data
from mtlseg.engine.inference import evaluate
from mtlseg.engine.train import train
from mtlseg.settings import load_config


def inner_split(data, seed: int) -> dict[str, list[str]]:
    """20 % of the training split's patients held out, seeded; official val unused."""
    patients = {c.case_id: c.meta.patient_id for c in data.dataset.cases}
    return seeded_patient_split({c: patients[c] for c in data.split["train"]}, 0.2, seed)


def run(args, minutes: float) -> dict:
    overrides = [
        f"data.path={args.data}",
        f"train.max_minutes={minutes}",
        "train.max_steps=-1",
        "train.progress_bar=false",
        *args.set,
    ]
    cfg = load_config(args.recipe, overrides)
    data = prepare_data(cfg.data)
    if args.inner_split:
        data = prepare_data(cfg.data, split=inner_split(data, args.split_seed))
    out = Path(args.out) / f"{Path(args.recipe).stem}-{minutes:g}min"
    start = time.perf_counter()
    result = train(cfg, out, data=data)
    wall = time.perf_counter() - start
    row = {"minutes": minutes, "wall_minutes": wall / 60, "steps": result.steps}
    row.update(result.throughput)
    for tag, ckpt in (("best", result.best_checkpoint), ("last", result.last_checkpoint)):
        metrics = evaluate(ckpt, args.data, "val", data=data)  # at the training size
        row[f"{tag}_dice"] = metrics["dice/mean"]  # per case (volume)
        row[f"{tag}_slice_dice"] = metrics.get("slice_dice/mean")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="unet")
    parser.add_argument("--data", required=True)
    parser.add_argument("--minutes", type=float, nargs="+", default=[10.0, 30.0])
    parser.add_argument("--out", default="runs/quality_budget")
    parser.add_argument("--inner-split", action="store_true")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = [run(args, m) for m in args.minutes]
    print(f"\n{args.recipe} on {args.data} ({'inner split' if args.inner_split else 'val split'})")
    print(
        "| budget (min) | steps | images/s | data wait | Dice best | slice Dice best | Dice last |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        vol = f"{r['best_slice_dice']:.4f}" if r["best_slice_dice"] is not None else "-"
        print(
            f"| {r['minutes']:g} | {r['steps']} | {r['images_per_s']:.1f} | "
            f"{100 * r['data_wait_share']:.1f} % | {r['best_dice']:.4f} | {vol} | "
            f"{r['last_dice']:.4f} |"
        )
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
