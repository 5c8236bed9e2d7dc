"""Images/s of ``predict`` and ``evaluate`` against the model's pure forward pass on the same
images in one process (the issue's goal: predict >= 0.7x of forward-only on CPU).

    python benchmarks/predict_speed.py --data ../shared/data/kvasir-seg --n 200
    python benchmarks/predict_speed.py --data ../shared/data/kvasir-seg --recipe unet \
        --size 96 --batch 32 --workers 2

The model is the recipe trained for one step on the first ``n`` images (its weights do not
change the speed). Forward-only: the images already read, normalised and resized, batched
through ``module.segment`` with no decoding or writing. predict: files to PNG masks at each
image's size; evaluate: files to per-case Dice/IoU (no HD95) at each image's size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mtlseg.engine.batched import InferenceSet, default_readers, file_entries
from mtlseg.engine.inference import evaluate_cases, load_module, predict
from mtlseg.engine.train import train
from mtlseg.settings import load_config


def subset(data: Path, n: int, dest: Path) -> Path:
    """Links to the first ``n`` image/mask pairs of a folder dataset."""
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
    for img in sorted((data / "images").iterdir())[:n]:
        (dest / "images" / img.name).symlink_to(img.resolve())
        (dest / "masks" / img.name).symlink_to((data / "masks" / img.name).resolve())
    return dest


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a folder dataset (images/ + masks/)")
    ap.add_argument("--recipe", default="unet")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="default: as predict chooses")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = subset(Path(args.data), args.n, tmp / "data")
        cfg = load_config(
            args.recipe,
            [
                f"data.path={data}",
                f"data.image_size={args.size}",
                "train.max_steps=1",
                "train.progress_bar=false",
                "train.max_minutes=null",
                *args.overrides,
            ],
        )
        torch.set_grad_enabled(True)
        ckpt = train(cfg, tmp / "run").best_checkpoint
        torch.set_grad_enabled(False)
        module = load_module(ckpt)
        files = sorted((data / "images").iterdir())
        items = [InferenceSet(module, file_entries(files), None)[i] for i in range(len(files))]
        x = torch.cat([i["x"] for i in items])
        module.segment(x[: args.batch])  # warm-up

        def forward() -> None:
            for s in range(0, len(x), args.batch):
                module.segment(x[s : s + args.batch])

        rates = {
            "forward only": len(x) / timed(forward),
            "predict": len(files)
            / timed(lambda: predict(ckpt, data / "images", tmp / "pred", args.batch, args.workers)),
            "evaluate (all)": len(files)
            / timed(
                lambda: evaluate_cases(ckpt, str(data), "all", False, args.batch, args.workers)
            ),
        }
    print(
        f"{args.recipe} at {args.size} px, {len(files)} images, batch {args.batch}, "
        f"{default_readers() if args.workers is None else args.workers} reader(s), "
        f"{torch.get_num_threads()} threads"
    )
    base = rates["forward only"]
    for name, rate in rates.items():
        print(f"{name:20s} {rate:8.1f} images/s  {rate / base:5.2f}x of forward-only")
    print("goal: predict >= 0.70x of forward-only")


if __name__ == "__main__":
    main()
