"""Train a recipe: prepare data, build the module and a Lightning Trainer, fit, checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import (
    EarlyStopping,
    ModelCheckpoint,
    OnExceptionCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader

from mtlseg.config import RunConfig, TrainConfig, with_saved_defaults
from mtlseg.data.dataset import SliceDataset
from mtlseg.engine.callbacks import ProgressLines, ResumeAtLastFinishedStep, ThroughputMonitor
from mtlseg.engine.checkpoint import AtomicCheckpointIO, writable_dir
from mtlseg.engine.data import (
    PreparedData,
    ResumableBatches,
    prepare_data,
    train_loader,
    val_loader,
    write_split_file,
)
from mtlseg.engine.loggers import build_loggers
from mtlseg.engine.module import STEP_OWNER, STEP_OWNER_KEY, MultiTaskModule, trainer_callbacks
from mtlseg.engine.precision import resolve_precision, run_line, trainer_precision
from mtlseg.engine.requirements import check_requirements, unlabelled_batch_size
from mtlseg.errors import ConfigError, DataError, Interrupted, MtlsegError
from mtlseg.models.inputs import INPUTS

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_dice: float | None
    throughput: dict[str, float]  # images/s and data-wait share (ThroughputMonitor.totals)
    steps: int  # optimiser steps done


def with_resolved_precision(cfg: RunConfig, out: Path, resume: bool) -> RunConfig:
    """``cfg`` with ``train.precision: auto`` replaced by what it means here, so the run's
    config.yaml records it; a resumed run keeps the precision it was started with."""
    precision = cfg.train.precision
    saved_file = out / "config.yaml"
    if precision == "auto" and resume and saved_file.is_file():
        saved = (yaml.safe_load(saved_file.read_text()) or {}).get("train", {}).get("precision")
        precision = saved if saved and saved != "auto" else precision
    precision = resolve_precision(precision, cfg.train.accelerator, say=False)  # train says it
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision))


def _strategy(t: TrainConfig) -> str | DDPStrategy:
    """``train.strategy``; ``auto`` with several devices is DDP, which looks for parameters a
    step leaves unused only when stages switch tasks (and their heads) off."""
    if t.strategy != "auto" or t.devices <= 1:
        return t.strategy
    return DDPStrategy(find_unused_parameters=bool(t.stages))


def build_trainer(cfg: RunConfig, out: Path, extra: Sequence[pl.Callback] = ()) -> pl.Trainer:
    """Lightning's trainer for ``cfg``; ``extra``: callbacks of the caller (a study's
    deadline)."""
    t = cfg.train
    ckpt_dir = out / "checkpoints"
    callbacks = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor="val/dice",
            mode="max",
            save_top_k=1,
            enable_version_counter=False,
        ),
        # Lightning writes save_last only when the top-k file changed; resuming needs it always
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="last",
            monitor=None,
            save_top_k=1,
            enable_version_counter=False,
        ),
        OnExceptionCheckpoint(dirpath=ckpt_dir, filename="interrupted"),
        ResumeAtLastFinishedStep(),
        ThroughputMonitor(every=max(1, t.log_every)),
        *extra,
    ]
    if t.early_stopping is not None:
        stop = EarlyStopping(
            "val/dice", mode="max", patience=t.early_stopping, check_on_train_epoch_end=False
        )
        callbacks.append(stop)  # checked after each validation, never mid-epoch
    bar = t.progress_bar and sys.stderr.isatty()  # a file or a pipe gets plain lines
    callbacks.append(TQDMProgressBar(refresh_rate=max(1, t.log_every)) if bar else ProgressLines())
    if t.max_steps < 0 and t.max_epochs is None and t.max_minutes is None:
        raise ConfigError("train: set max_steps, max_epochs or max_minutes (all are unlimited now)")
    if t.max_minutes is not None and t.max_minutes <= 0:
        raise ConfigError(f"train.max_minutes: expected a positive number, got {t.max_minutes}")
    precision = trainer_precision(t.precision, t.accelerator)
    return pl.Trainer(
        default_root_dir=out,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs if t.max_epochs is not None else -1,
        # stops after the batch that crosses the budget, then validates once more
        max_time=timedelta(minutes=t.max_minutes) if t.max_minutes is not None else None,
        **_validation_schedule(t),
        num_sanity_val_steps=0,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=_strategy(t),
        use_distributed_sampler=False,  # ResumableBatches shares the batches out itself
        precision=precision.get("precision"),
        callbacks=callbacks,
        logger=build_loggers(cfg, out),
        log_every_n_steps=t.log_every,
        enable_progress_bar=bar,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO(), *precision.get("plugins", [])],  # the step clips
        deterministic=False,
    )


def _validation_schedule(t: TrainConfig) -> dict:
    """``val_every`` steps (across epoch boundaries), or once per epoch when it is 0."""
    if t.val_every == 0:
        return {"val_check_interval": 1.0, "check_val_every_n_epoch": 1}
    every = t.val_every if t.max_steps < 0 else min(t.val_every, t.max_steps)
    return {"val_check_interval": every, "check_val_every_n_epoch": None}


def resume_checkpoint(out: Path) -> Path | None:
    """The newest of ``last.ckpt`` (every validation) and ``interrupted.ckpt`` (on a crash or Ctrl-C)."""
    found = [
        p
        for p in (out / "checkpoints" / n for n in ("last.ckpt", "interrupted.ckpt"))
        if p.is_file()
    ]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _saved_step(path: Path) -> int | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("global_step")


def check_step_owner(ckpt: Path) -> None:
    """Refuse to resume a checkpoint whose optimiser steps Lightning counted (mtlseg before
    its training step was its own, under manual optimisation): Lightning would restart it
    at step 0 with the weights of step N."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    if saved.get(STEP_OWNER_KEY) != STEP_OWNER and saved.get("global_step", 0) > 0:
        raise MtlsegError(
            f"{ckpt}: written by an earlier mtlseg, whose optimiser steps Lightning counted; "
            "this version cannot resume it (evaluate and predict read it as before): finish "
            "the run with the version that started it, or start it again in a new --out"
        )


RESUME_MUST_MATCH = ("data", "model", "tasks", "terms", "weighting")


def check_resumable(cfg: RunConfig, out: Path) -> None:
    """A run continues only with the model, tasks, data and weighting it was started with;
    the schedule (``train.*``, e.g. a larger ``max_steps``) may change."""
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        return
    saved = with_saved_defaults(yaml.safe_load(saved_file.read_text()))
    current = cfg.to_dict()
    for section in RESUME_MUST_MATCH:
        now = current[section]
        before = saved.get(section, [] if isinstance(now, list) else None)  # older config
        if before == now:
            continue
        where = section
        if isinstance(before, dict) and isinstance(now, dict):
            where += "." + min(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        raise MtlsegError(
            f"{out}: cannot resume, {where} differs from the run's config.yaml "
            "(start a new --out for a different setup)"
        )


def build_module(cfg: RunConfig, data: PreparedData) -> MultiTaskModule:
    """The module for ``cfg``; checks what its tasks need of ``data``
    (``check_requirements``), sets FiLM's statistics."""
    needs = INPUTS.get(cfg.model.input).needs_channels
    if needs is not None and data.dataset.in_channels != needs:
        raise DataError(
            f"{data.index.root}: model.input={cfg.model.input} needs {needs}-channel (RGB) "
            f"images, this dataset has {data.dataset.in_channels} channel(s) (grey images "
            "cannot be colourised)"
        )
    check_requirements(cfg, data)  # labels, dense arrays, metadata: before building
    ann = data.annotations
    module = MultiTaskModule(
        cfg.to_dict(),
        data.dataset.in_channels,
        data.class_names,
        data.case_ids,
        data.split,
        {c: ann.values(c) for c in ann.columns},
    )
    if module.model.film is not None and isinstance(data.train, SliceDataset):  # FiLM: 2D only
        module.model.film.set_statistics(data.train.meta_values)
    return module


def loaders(cfg: RunConfig, data: PreparedData) -> tuple[DataLoader, DataLoader]:
    """The training loader (labelled batches, with pool samples when some task or term
    learns from them) and the validation loader."""
    t, nw = cfg.train, cfg.data.num_workers
    unlabelled = unlabelled_batch_size(cfg, len(data.split.get("unlabelled", [])))
    return (
        train_loader(data, t.batch_size, t.seed, nw, t.sampler, unlabelled),
        val_loader(data, t.batch_size, nw),
    )


def train(
    cfg: RunConfig,
    out: Path | str,
    resume: bool = False,
    data: PreparedData | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> TrainResult:
    """Train ``cfg`` into ``out``; ``resume`` continues from ``out/checkpoints/last.ckpt``;
    ``callbacks`` join the trainer's own."""
    out = Path(out)
    last = out / "checkpoints" / "last.ckpt"
    resume_from = resume_checkpoint(out)
    if resume and resume_from is None:
        raise MtlsegError(
            f"{out}: nothing to resume (no checkpoints/last.ckpt or interrupted.ckpt)"
        )
    if not resume and resume_from is not None:
        raise MtlsegError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    if resume:
        check_resumable(cfg, out)
        check_step_owner(cast(Path, resume_from))
    # under DDP every process runs this function; only the first one writes files
    first = cast(Any, rank_zero_only).rank == 0  # Lightning sets rank at import
    if first:
        writable_dir(out)  # before the data is read and the model built: fail in seconds
    requested = str(cfg.train.precision)
    cfg = with_resolved_precision(cfg, out, resume)
    if first:
        t = cfg.train
        log.info(
            "train %s -> %s: %s",
            cfg.name,
            out,
            run_line(str(t.precision), requested, t.accelerator),
        )
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    data = data or prepare_data(cfg.data)
    if first:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_split_file(data, out / "splits.json")
    module = build_module(cfg, data)
    trainer = build_trainer(cfg, out, callbacks)
    train_dl, val_dl = loaders(cfg, data)
    if resume_from is not None and resume:
        cast(ResumableBatches, train_dl.batch_sampler).skip_next(
            _batches_done_in_epoch(resume_from, len(train_dl))
        )
    metrics_log = out / "logs" / "metrics.csv"
    # Lightning's CSV logger starts the file afresh: keep what the run logged before
    resumed_at = _saved_step(resume_from) if resume_from is not None else None
    earlier = _earlier_rows(metrics_log, resumed_at) if resume and first else []
    try:
        trainer.fit(
            module,
            train_dataloaders=train_dl,
            val_dataloaders=val_dl,
            ckpt_path=str(resume_from) if resume else None,
        )
    except SystemExit:  # Lightning's answer to Ctrl-C, after its exception checkpoint
        if not trainer.interrupted:
            raise
        crash = out / "checkpoints" / "interrupted.ckpt"
        saved = _saved_step(crash)
        raise Interrupted(
            f"{crash} holds step {saved}" if saved is not None else f"nothing saved in {out}"
        ) from None
    finally:
        if earlier and trainer.is_global_zero:
            _prepend_rows(metrics_log, earlier)
            _kept_rows(metrics_log).unlink(missing_ok=True)
    if _saved_step(last) != trainer.global_step:  # steps after the last validation
        trainer.save_checkpoint(last)
    callbacks = trainer_callbacks(trainer)
    ckpt_cb = next(c for c in callbacks if isinstance(c, ModelCheckpoint) and c.monitor)
    best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else last
    score = ckpt_cb.best_model_score
    monitor = next(c for c in callbacks if isinstance(c, ThroughputMonitor))
    return TrainResult(
        out,
        best,
        last,
        float(score) if score is not None else None,
        monitor.totals(),
        trainer.global_step,
    )


def _batches_done_in_epoch(ckpt: Path, per_epoch: int) -> int:
    """Batches of the interrupted epoch a checkpoint had trained on (0 at an epoch's end)."""
    loops = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("loops", {})
    progress = loops.get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    done = progress.get("current", {}).get("completed", 0)
    return 0 if progress.get("is_last_batch") or done >= per_epoch else int(done)


def _read_rows(path: Path, upto: int | None) -> list[dict[str, str]]:
    """Rows of a metrics CSV logged at steps <= ``upto`` (those after the checkpoint that a
    resumed run restarts from are logged again)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if upto is None or int(r.get("step") or 0) <= upto]


def _kept_rows(metrics_log: Path) -> Path:
    return metrics_log.with_name("metrics.before-resume.csv")


def _earlier_rows(metrics_log: Path, upto: int | None) -> list[dict[str, str]]:
    """The rows logged up to the checkpoint a run resumes from. They are also kept on disk
    until the resumed run has written them back, so a resumed run killed hard loses none."""
    kept = _kept_rows(metrics_log)
    rows = _read_rows(kept, upto)
    last_kept = max((int(r.get("step") or 0) for r in rows), default=-1)
    rows += [r for r in _read_rows(metrics_log, upto) if int(r.get("step") or 0) > last_kept]
    if rows:
        _write_rows(kept, rows)
    return rows


def _prepend_rows(path: Path, earlier: list[dict[str, str]]) -> None:
    """Write ``earlier`` rows before the rows now in ``path``, with the union of columns."""
    _write_rows(path, earlier + _read_rows(path, None))


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Write ``rows`` to the CSV ``path`` atomically, with the union of their columns."""
    columns = sorted({k for r in rows for k in r})
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
