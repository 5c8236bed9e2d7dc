"""Training speed and accuracy of fp32 vs bf16-mixed (and torch.compile) on this machine.

    python benchmarks/precision.py --data ../shared/data/acdc --recipe unet --size 64 \
        --set model.params.channels=[16,32,64,128] --steps 20
    python benchmarks/precision.py --data ../shared/data/acdc --quality-steps 300 --seeds 3
    python benchmarks/precision.py --data ../shared/data/acdc --compile

Part 1, speed: images/s of the recipe's training step (forward, losses, backward, Adam) in
each mode, on real batches; the achieved GFLOP/s (FLOPs of one step counted by
``torch.utils.flop_counter``, over the median step time) beside the throughput of a large
matrix multiply in the same dtype and thread count (the practical peak), and their ratio.
Part 2 (``--quality-steps N``): the validation Dice (per case, at the data's resolution) of
``mtlseg train`` runs of N steps in fp32 and bf16-mixed, ``--seeds`` each, mean +- std and
the paired difference: whether bf16 is as accurate (``BF16_ACCURATE`` in
``mtlseg.engine.precision``). Prints what ``train.precision: auto`` resolves to here.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtlseg.engine.data import prepare_data, train_loader
from mtlseg.engine.inference import evaluate_cases
from mtlseg.engine.precision import auto_precision, cpu_flags, cpu_model, has_native_bf16
from mtlseg.engine.step import Optimisation
from mtlseg.engine.train import build_module, train
from mtlseg.settings import load_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 3) -> float:
    """GFLOP/s of an n x n matrix multiply in ``dtype`` (the best of ``repeats``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _step(module, batch, opt, dtype: torch.dtype | None):
    """The public training step, under CPU bf16 autocast for ``bf16``."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        module.train_step(batch, 0, Optimisation(opt))


def speed(cfg, data, mode: str, steps: int, compiled: bool) -> dict:
    """Median step time, images/s, FLOPs per step and GFLOP/s of one mode."""
    module = build_module(cfg, data).train()
    if compiled:  # the method training calls (compiling the module would wrap forward only)
        module.model.forward_with_features = torch.compile(module.model.forward_with_features)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    loader = iter(train_loader(data, cfg.train.batch_size, 0, 0, cfg.train.sampler))
    batches = [next(loader) for _ in range(4)]
    dtype = DTYPES[mode]
    t0 = time.perf_counter()
    _step(module, batches[0], opt, dtype)  # warm-up (and compilation)
    first = time.perf_counter() - t0
    with FlopCounterMode(display=False) as counter:
        _step(module, batches[1], opt, dtype)
    flops = counter.get_total_flops()
    times = [_timed(lambda b=b: _step(module, b, opt, dtype)) for b in batches * (steps // 4 + 1)]
    median = statistics.median(times[:steps])
    images = batches[0]["image"].shape[0]
    return {
        "s_per_step": median,
        "images_per_s": images / median,
        "gflops_per_step": flops / 1e9,
        "gflop_s": flops / median / 1e9,
        "first_step_s": first,
    }


def quality(recipe: str, overrides: list[str], data_path: str, steps: int, seeds: int) -> dict:
    """Validation Dice per mode and seed after ``steps`` steps of ``mtlseg train``."""
    out: dict[str, list[float]] = {}
    for mode, precision in (("fp32", "32"), ("bf16", "bf16-mixed")):
        for seed in range(seeds):
            sets = [
                *overrides,
                f"data.path={data_path}",
                f"train.precision={precision}",
                f"train.seed={seed}",
                f"train.max_steps={steps}",
                f"train.val_every={steps}",
                "train.max_minutes=null",
                "train.progress_bar=false",
            ]
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                result = train(load_config(recipe, sets), Path(tmp) / "run")
                minutes = (time.perf_counter() - t) / 60
                _, summary = evaluate_cases(
                    result.last_checkpoint, data_path, "val", with_hd95=False
                )
            dice = summary["metrics"]["dice/mean"]["mean"]
            out.setdefault(mode, []).append(dice)
            print(f"  {mode} seed {seed}: Dice {dice:.4f} ({minutes:.1f} min)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/acdc")
    p.add_argument("--recipe", default="unet")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--quality-steps", type=int, default=0, help="train runs of N steps (0: none)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--set", action="append", default=[], help="recipe override")
    args = p.parse_args()
    overrides = [f"data.image_size={args.size}", f"train.batch_size={args.batch}", *args.set]
    cfg = load_config(args.recipe, [*overrides, f"data.path={args.data}", "data.augment=none"])
    data = prepare_data(cfg.data)
    threads = torch.get_num_threads()
    flags = cpu_flags()
    print(
        f"{cpu_model()}; {threads} threads; torch {torch.__version__}; native bf16: "
        f"{has_native_bf16(flags)} ({', '.join(sorted(f for f in flags if 'bf16' in f or 'amx' in f)) or 'no avx512_bf16/amx'})"
    )
    print(f"{args.recipe} at {args.size} px, batch {args.batch}, median of {args.steps} steps")
    for mode in args.modes:
        peak = matmul_peak(DTYPES[mode])
        for compiled in (False, True) if args.compile else (False,):
            try:
                r = speed(cfg, data, mode, args.steps, compiled)
            except Exception as err:  # compile can fail on a machine without a compiler
                print(f"{mode}{' compiled' if compiled else ''}: failed ({err})")
                continue
            tag = f"{mode}{' + compile' if compiled else ''}"
            print(
                f"{tag:16s} {r['images_per_s']:7.1f} img/s  {1000 * r['s_per_step']:7.1f} ms/step  "
                f"{r['gflops_per_step']:6.2f} GFLOP/step  {r['gflop_s']:6.1f} GFLOP/s achieved  "
                f"matmul peak {peak:6.1f} GFLOP/s  ({100 * r['gflop_s'] / peak:4.1f} % of it)  "
                f"first step {r['first_step_s']:.1f} s"
            )
    if args.quality_steps:
        print(f"quality: {args.quality_steps} steps, {args.seeds} seeds per mode")
        scores = quality(args.recipe, overrides, args.data, args.quality_steps, args.seeds)
        for mode, values in scores.items():
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"{mode}: Dice {statistics.mean(values):.4f} +- {spread:.4f}")
        if len(scores) == 2:
            diffs = [b - a for a, b in zip(scores["fp32"], scores["bf16"], strict=True)]
            spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            print(f"bf16 - fp32 (paired): {statistics.mean(diffs):+.4f} +- {spread:.4f}")
    with contextlib.suppress(Exception):
        print(f"train.precision: auto resolves to {auto_precision(torch.cuda.is_available())} here")


if __name__ == "__main__":
    main()
