"""A short probe of a configuration's training step on this machine, for estimates."""

from __future__ import annotations

import contextlib
import itertools
import time

import torch

from mtlseg.config import RunConfig
from mtlseg.engine.data import PreparedData
from mtlseg.engine.step import Optimisation
from mtlseg.engine.train import build_module, loaders


def seconds_per_step(cfg: RunConfig, data: PreparedData, steps: int = 3) -> float | None:
    """The median seconds of ``steps`` training steps of ``cfg`` after one warm-up step, on
    the run's own batches and precision (CPU bf16 autocast where the run has it); the
    weights it moves are thrown away. None when the loader gives no batch."""
    module = build_module(cfg, data)
    params = [p for p in module.parameters() if p.requires_grad]
    step = Optimisation(torch.optim.Adam(params, lr=cfg.train.lr))
    loader = loaders(cfg, data)[0]
    if len(loader) == 0:
        return None
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # a short epoch recurs
    bf16 = cfg.train.precision == "bf16-mixed" and not torch.cuda.is_available()
    times = []
    for i in range(steps + 1):
        batch = next(batches)
        started = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            module.train_step(batch, i, step)
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2]
