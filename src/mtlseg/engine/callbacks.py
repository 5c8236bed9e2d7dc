"""Training callbacks of our own: throughput and the share of time spent waiting for data,
progress as plain lines, and resuming a crash checkpoint at its last finished step."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)


class ThroughputMonitor(pl.Callback):
    """Logs ``time/images_per_s`` and ``time/data_wait_share`` every ``every`` steps.

    The wait is the time from the end of one training batch to the start of the next (the
    DataLoader's fetch and collation, plus Lightning's bookkeeping); validation is not
    counted. Totals over the whole run stay in ``totals()`` for benchmarks.
    """

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.wait = self.busy = 0.0
        self.images = 0.0
        self._window = [0.0, 0.0, 0.0]  # wait, busy, images since the last log
        self._ended: float | None = None
        self._started = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._ended = time.perf_counter()  # the epoch's first fetch counts as waiting

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._started = time.perf_counter()
        if self._ended is not None:
            self._window[0] += self._started - self._ended

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._ended = time.perf_counter()
        self._window[1] += self._ended - self._started
        self._window[2] += batch["image"].shape[0]
        if trainer.global_step % self.every == 0:
            self._flush(pl_module)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._ended = None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._ended = time.perf_counter() if trainer.training else None

    def _flush(self, pl_module: Any) -> None:
        wait, busy, images = self._window
        self.wait, self.busy, self.images = self.wait + wait, self.busy + busy, self.images + images
        self._window = [0.0, 0.0, 0.0]
        if wait + busy > 0:
            pl_module.log("time/images_per_s", images / (wait + busy))
            pl_module.log("time/data_wait_share", wait / (wait + busy))

    def totals(self) -> dict[str, float]:
        """Over the run so far: images/s of training steps and the share spent waiting."""
        wait, busy = self.wait + self._window[0], self.busy + self._window[1]
        images = self.images + self._window[2]
        total = max(wait + busy, 1e-9)
        return {
            "images_per_s": images / total,
            "data_wait_share": wait / total,
            "train_seconds": total,
        }


class ResumeAtLastFinishedStep(pl.Callback):
    """Resumes a crash checkpoint exactly at the last finished optimiser step.

    ``interrupted.ckpt`` is written while a batch is under way (counted as started, never
    finished, no optimiser step). Lightning's restart counted that batch once more, so
    validation came one step early, and its logging step grew by one on every restart. Here
    the unfinished batch is marked not started, and the logging step is set to the optimiser
    step at the first batch after the restart (Lightning's restart adds one to it or not
    depending on where the checkpoint was written; no public setting reaches it: the one
    private attribute mtlseg writes).
    """

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
        self._restarted = True
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
        if progress and progress["total"]["processed"] == progress["total"]["completed"]:
            for counts in (progress["total"], progress["current"]):
                counts["ready"] = counts["started"] = counts["completed"]

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if getattr(self, "_restarted", False):  # after the epoch loop's restart bookkeeping
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
            self._restarted = False


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class ProgressLines(pl.Callback):
    """One plain line per validation (the step, the validation Dice, the time spent and
    about how long is left at this pace), where a progress bar cannot draw: output that is
    not a terminal gets these lines instead of ``\r`` bars."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.started, self.first_step = time.monotonic(), trainer.global_step

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(self, "started"):
            return
        step, total = trainer.global_step, trainer.max_steps
        spent = time.monotonic() - self.started
        dice = trainer.callback_metrics.get("val/dice")
        line = f"step {step}" + (f"/{total}" if total and total > 0 else "")
        if dice is not None:
            line += f": val Dice {float(dice):.4f}"
        line += f", {_minutes(spent)}"
        done = step - self.first_step
        if total and total > step and done > 0:
            line += f", about {_minutes(spent / done * (total - step))} left"
        log.info(line)
