"""Per-step time of every weighting kind relative to ``equal``, in one process, on real
batches of a 3-task recipe (segmentation + distance + normals by default), and the memory
the gradient aggregators add (the Jacobian of the losses over the shared parameters).

    python benchmarks/weighting_speed.py --data ../shared/data/acdc
    python benchmarks/weighting_speed.py --data ../shared/data/acdc --kinds equal uw nash-mtl \
        --set model.params.channels=[16,32,64,128] --size 96 --batch 8 --steps 20
    python benchmarks/weighting_speed.py --data ../shared/data/acdc \
        --kinds equal gradnorm gradnorm:feature=decoder4   # a kind with its own params

Each kind gets its own module (same seed, same weights) and the same few real batches;
rounds alternate the kinds so that drift of the machine hits all of them alike, and the
median step (forward, weighting, backward, Adam) of each is reported with its ratio to
``equal``. Nash-MTL runs with ``update_weights_every=25`` (the issue's target setting) unless
``--set weighting.params...`` says otherwise. CUDA: peak allocated memory per kind; CPU: the
size of the Jacobian an aggregator holds (K x shared parameters x 4 bytes).

``--peak-rss`` measures memory instead of time: each kind trains a few steps alone in a child
process, whose peak resident memory (the whole process: Python, torch, data, model) is
printed with its difference to ``equal``'s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from mtlseg.engine.data import prepare_data, train_loader
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.step import Optimisation
from mtlseg.engine.train import build_module
from mtlseg.settings import load_config
from mtlseg.weighting import WEIGHTINGS
from mtlseg.weighting.aggregator import AggregatorWeighting

KINDS = [k for k in WEIGHTINGS.names() if k not in ("fixed", "constant", "decay")]
TARGETS = {"famo": 1.10, "nash-mtl": 1.5}  # the goals; loss weightings 1.05


def build(recipe: str, kind: str, data_path: str, overrides: list[str], data, device: str):
    """``kind`` may carry its own params: ``gradnorm:feature=decoder3`` (comma-separated)."""
    name, _, params = kind.partition(":")
    extra = [f"weighting.params.{p}" for p in params.split(",") if p]
    if name == "nash-mtl" and not extra:
        extra = ["weighting.params.update_weights_every=25"]
    cfg = load_config(
        recipe, [f"data.path={data_path}", *overrides, f"weighting.kind={name}", *extra]
    )
    torch.manual_seed(0)
    module = build_module(cfg, data)  # the builder train uses, with its checks
    module.train()
    module.to(device)
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    return module, opt


def step(module: MultiTaskModule, opt, batch, index: int) -> None:
    """One training step through the public step training uses: losses, the weighting's
    update (an aggregator's backward included), the optimiser."""
    module.train_step(batch, index, Optimisation(opt))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--recipe", default="unet-geometry")
    p.add_argument("--kinds", nargs="+", default=list(KINDS))
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=15, help="timed steps per kind")
    p.add_argument("--peak-rss", action="store_true", help="peak memory of each kind alone")
    p.add_argument("--alone", action="store_true", help=argparse.SUPPRESS)  # a --peak-rss child
    p.add_argument("--set", nargs="*", default=[], dest="overrides")
    args = p.parse_args()
    if args.peak_rss:
        print_peak_rss(args)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = [f"data.image_size={args.size}", "data.augment=false", *args.overrides]
    cfg = load_config(args.recipe, [f"data.path={args.data}", *overrides])
    data = prepare_data(cfg.data)
    loader = iter(train_loader(data, args.batch, 0, 0))
    batches = [
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(loader).items()}
        for _ in range(3)
    ]
    kinds = args.kinds if args.alone else ["equal", *[k for k in args.kinds if k != "equal"]]
    runs = {k: build(args.recipe, k, args.data, overrides, data, device) for k in kinds}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    peak: dict[str, float] = {}
    for i in range(args.steps + 2):  # the first two rounds warm up
        for kind in kinds:
            module, opt = runs[kind]
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            step(module, opt, batches[i % len(batches)], i)
            if device == "cuda":
                torch.cuda.synchronize()
                peak[kind] = max(peak.get(kind, 0.0), torch.cuda.max_memory_allocated() / 2**20)
            if i >= 2:
                times[kind].append(time.perf_counter() - t)
    if args.alone:
        return
    base = statistics.median(times["equal"])
    shared = sum(p.numel() for p in runs["equal"][0].model.shared_parameters())
    print(
        f"{args.recipe}, {len(runs['equal'][0].tasks)} tasks, {args.size} px, batch "
        f"{args.batch}, {device}, {args.steps} timed steps, {shared / 1e6:.2f} M shared params"
    )
    print("| kind | ms/step | x equal | goal | extra memory |")
    print("|---|---|---|---|---|")
    for kind in kinds:
        module = runs[kind][0]
        median = statistics.median(times[kind])
        aggregator = isinstance(module.weighting, AggregatorWeighting)
        goal = TARGETS.get(kind.partition(":")[0], None if aggregator else 1.05)
        goal_text = f"<= {goal:.2f}" if goal else "-"
        if device == "cuda":
            memory = f"{peak[kind]:.0f} MiB peak"
        else:
            k = len(module.tasks) + len(module.terms)
            memory = f"Jacobian {k * shared * 4 / 2**20:.1f} MiB" if aggregator else "-"
        print(f"| {kind} | {1000 * median:.1f} | {median / base:.2f} | {goal_text} | {memory} |")


def print_peak_rss(args) -> None:
    """Each kind trains ``--steps`` steps alone in a child process: its peak RSS (MiB)."""
    kinds = ["equal", *[k for k in args.kinds if k != "equal"]]
    print(f"{args.recipe}, {args.size} px, batch {args.batch}, {args.steps} steps per child")
    print("| kind | peak RSS (MiB) | - equal |")
    print("|---|---|---|")
    base = None
    for kind in kinds:
        cmd = [sys.executable, __file__, "--alone", "--data", args.data, "--recipe", args.recipe]
        cmd += ["--kinds", kind, "--size", str(args.size), "--batch", str(args.batch)]
        cmd += ["--steps", str(args.steps), "--set", *args.overrides]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            raise SystemExit(f"{kind}: the child process failed ({status})")
        rss = usage.ru_maxrss / 1024  # KiB on Linux
        base = rss if base is None else base
        print(f"| {kind} | {rss:.0f} | {rss - base:+.0f} |")


if __name__ == "__main__":
    main()
