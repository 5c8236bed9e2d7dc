"""The LightningModule: wires model, tasks and weighting; Lightning owns the loop."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from mtlseg.config import RunConfig, build_dataclass
from mtlseg.errors import TrainingError
from mtlseg.metrics import SegmentationMetrics
from mtlseg.models import MultiTaskModel, build_backbone
from mtlseg.tasks import TaskContext, build_task
from mtlseg.weighting import build_weighting


def build_model_and_tasks(cfg: RunConfig, in_channels: int, num_classes: int):
    """RunConfig -> (MultiTaskModel, tasks). The first task is the segmentation task."""
    backbone = build_backbone(cfg.model.backbone, cfg.model.params, in_channels, num_classes)
    ctx = TaskContext(backbone, num_classes, in_channels, cfg.data.image_size)
    tasks = [build_task(t, ctx) for t in cfg.tasks]
    heads = {t.name: head for t in tasks if (head := t.build_head()) is not None}
    return MultiTaskModel(backbone, heads, seg_name=tasks[0].name), tasks


class MultiTaskModule(pl.LightningModule):
    """Training step: outputs -> per-task losses -> weighting -> one scalar.

    Hyper-parameters are plain dicts and lists, so checkpoints load with
    ``torch.load(weights_only=True)`` and rebuild the exact model.
    """

    def __init__(
        self,
        config: dict[str, Any],
        in_channels: int,
        class_names: list[str],
        val_case_ids: list[str] | None = None,
        split: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg: RunConfig = build_dataclass(RunConfig, config)
        self.class_names = list(class_names)
        self.model, self.tasks = build_model_and_tasks(self.cfg, in_channels, len(class_names))
        self.weighting = build_weighting(
            self.cfg.weighting.kind,
            self.cfg.weighting.params,
            {t.name: t.weight for t in self.tasks},
        )
        self.val_metrics = SegmentationMetrics(self.class_names)
        self.case_index = {c: i for i, c in enumerate(val_case_ids or [])}

    @property
    def seg_task(self):
        return self.tasks[0]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

    def task_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        outputs = self.model(batch["image"])
        return {t.name: t.loss(outputs[t.name], t.target(batch)) for t in self.tasks}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.task_losses(batch)
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise TrainingError(
                    f"step {self.global_step}: loss of task {name!r} is {value.item()} "
                    "(lower train.lr, or check the data for extreme values)"
                )
        total = self.weighting(losses, self.global_step)
        bs = batch["image"].shape[0]
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in losses.items()}, batch_size=bs)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.model.segment(batch["image"]).argmax(1)
        cases = torch.tensor([self.case_index.get(c, 0) for c in batch["case_id"]])
        self.val_metrics.update(pred, batch["mask"], cases)

    def on_validation_epoch_end(self) -> None:
        result = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log("val/dice", result["dice/mean"], prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in result.items() if k != "dice/mean"})

    def configure_optimizers(self):
        t = self.cfg.train
        optimizer = torch.optim.Adam(self.parameters(), lr=t.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=t.lr_halve_every, gamma=0.5
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
