"""A digest of the first training losses of the shipped recipes: proof that a refactor of the
training step changed no number.

    python benchmarks/loss_digest.py --data ../shared/data/acdc            # the code on PYTHONPATH
    PYTHONPATH=../wt-before/src python benchmarks/loss_digest.py --data ../shared/data/acdc

Each recipe trains 50 steps through the command line (``mtlseg train``, Lightning and all) in
fp32 with seed 0, 32-px images, batch 4 and one validation at the end; the digest is the
SHA-256 of every logged loss (the total and each task's and term's, per step, at full
precision) and of the final validation Dice. Run it before and after a change on one
machine: equal digests mean the change trains exactly as before. The semi-supervised and
pretraining recipes keep SSL4MIS's 7 labelled patients and the rest as their pool;
``unet-ddp`` trains ``unet`` in two CPU processes (``train.devices=2``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COMMON = [
    "train.precision=32",
    "train.seed=0",
    "train.max_steps=50",
    "train.max_epochs=null",
    "train.max_minutes=null",
    "train.early_stopping=null",
    "train.val_every=50",
    "train.log_every=1",
    "train.batch_size=4",
    "train.accelerator=cpu",
    "train.progress_bar=false",
    "data.image_size=32",
    "data.num_workers=0",
]
POOL = ["data.label_budget=7"]

# name -> (recipe, its own overrides)
RUNS: dict[str, tuple[str, list[str]]] = {
    "unet": ("unet", []),
    "unet-hog": ("unet-hog", []),
    "unet-dtc": ("unet-dtc", POOL),
    "unet-bcp": ("unet-bcp", POOL),
    "unet-mean-teacher": ("unet-mean-teacher", POOL),
    "unet-genesis": ("unet-genesis", POOL),
    "mtan-3task": ("mtan-3task", []),
    "unet-geometry-upgrad": ("unet-geometry", ["weighting.kind=upgrad"]),
    "unet-geometry-gradnorm": ("unet-geometry", ["weighting.kind=gradnorm"]),
    "unet3d": ("unet3d", ["data.patch_size=[32,32,8]", "train.batch_size=2"]),
    "small-unet-contrastive": ("small-unet-contrastive", []),
    "small-unet-film": ("small-unet-film", []),
    "unet-ddp": ("unet", ["train.devices=2"]),
}


def digest_of(metrics_csv: Path) -> tuple[str, list[float], float | None]:
    """(SHA-256 of the logged losses and validation Dice, the total loss per step, the Dice)."""
    with metrics_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    h = hashlib.sha256()
    totals, dice = [], None
    for row in rows:
        for key in sorted(row):
            value = row[key]
            if value and (key.startswith("train/loss") or key == "val/dice"):
                h.update(f"{row['step']},{key},{value}\n".encode())
        if row.get("train/loss"):
            totals.append(float(row["train/loss"]))
        if row.get("val/dice"):
            dice = float(row["val/dice"])
    return h.hexdigest(), totals, dice


def run(name: str, data: str, work: Path) -> str:
    recipe, extra = RUNS[name]
    out = work / name
    argv = [sys.executable, "-m", "mtlseg", "train", "--recipe", recipe, "--data", data]
    argv += ["--out", str(out)]
    for item in [*COMMON, *extra]:
        argv += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"{name:24s} FAILED: {done.stderr.strip().splitlines()[-1:]}"
    digest, totals, dice = digest_of(out / "logs" / "metrics.csv")
    return (
        f"{name:24s} {digest[:16]}  steps {len(totals)}  loss {totals[0]:.6f} -> "
        f"{totals[-1]:.6f}  val Dice {dice if dice is not None else float('nan'):.6f}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.join(os.environ.get("MTLSEG_DATA", ""), "acdc"))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = p.parse_args()
    import mtlseg

    print(f"mtlseg from {Path(mtlseg.__file__).parent}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            print(run(name, args.data, Path(tmp)), flush=True)


if __name__ == "__main__":
    main()
