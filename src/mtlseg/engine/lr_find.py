"""Lightning's learning-rate range test (paper 001 picks its initial rate this way)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.tuner import Tuner

from mtlseg.config import RunConfig
from mtlseg.engine.data import PreparedData, prepare_data
from mtlseg.engine.precision import trainer_precision
from mtlseg.engine.train import build_module, loaders
from mtlseg.errors import TrainingError


@dataclass
class LRFindResult:
    suggestion: float
    lrs: list[float]
    losses: list[float]
    plot: Path
    record: Path


def find_lr(
    cfg: RunConfig,
    out: Path | str,
    num_steps: int = 100,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    data: PreparedData | None = None,
) -> LRFindResult:
    """Train ``num_steps`` with an exponentially rising rate; suggest the steepest descent.

    The model's weights are restored afterwards (Lightning does it); the curve is written to
    ``out/lr_find.png`` and the figures to ``out/lr_find.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    data = data or prepare_data(cfg.data)
    module = build_module(cfg, data)
    trainer = pl.Trainer(
        default_root_dir=out,
        accelerator=cfg.train.accelerator,
        devices=1,
        **trainer_precision(cfg.train.precision, cfg.train.accelerator),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    train_dl, val_dl = loaders(cfg, data)
    finder = Tuner(trainer).lr_find(
        module,
        train_dataloaders=train_dl,
        val_dataloaders=val_dl,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=num_steps,
        attr_name="lr",
        update_attr=False,
    )
    suggestion = finder.suggestion() if finder is not None else None
    if finder is None or suggestion is None or not math.isfinite(suggestion):
        raise TrainingError(
            f"learning-rate finder: no suggestion after {num_steps} steps (the loss did not "
            "fall; try more steps or another range)"
        )
    lrs, losses = finder.results["lr"], finder.results["loss"]
    plot = out / "lr_find.png"
    figure: Any = finder.plot(suggest=True)  # a matplotlib Figure
    figure.savefig(plot, dpi=100)
    record = out / "lr_find.json"
    record.write_text(json.dumps({"suggestion": suggestion, "lr": lrs, "loss": losses}))
    return LRFindResult(float(suggestion), list(lrs), list(losses), plot, record)
