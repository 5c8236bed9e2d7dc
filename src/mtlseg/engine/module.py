"""The LightningModule: wires model, tasks, terms and weighting; Lightning runs the loop,
``engine.step.TrainingStep`` each optimiser step (manual optimisation)."""

from __future__ import annotations

import logging
import math
from typing import Any, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import Metric

from mtlseg.config import RunConfig, build_dataclass, typed, with_saved_defaults
from mtlseg.engine.optimizers import build_optimizer
from mtlseg.engine.rows import PoolForward
from mtlseg.engine.schedulers import RunProgress, build_scheduler
from mtlseg.engine.spatial import SpatialMode, spatial_mode
from mtlseg.engine.stages import StagePlan
from mtlseg.engine.step import Optimisation, TrainingStep
from mtlseg.engine.teacher import build_teacher
from mtlseg.errors import ConfigError
from mtlseg.metrics import SegmentationMetrics
from mtlseg.models import MultiTaskModel, build_backbone
from mtlseg.models.film import FiLMGenerator
from mtlseg.models.inputs import INPUTS
from mtlseg.settings import resolve
from mtlseg.tasks import TASKS, TaskContext, build_task
from mtlseg.tasks.base import Task
from mtlseg.tasks.segmentation import SegmentationTask
from mtlseg.terms import Term, build_terms
from mtlseg.weighting import build_weighting

log = logging.getLogger(__name__)


def build_model_and_tasks(
    cfg: RunConfig,
    in_channels: int,
    num_classes: int,
    label_values: dict[str, list[str]] | None = None,
) -> tuple[MultiTaskModel, list[Task]]:
    """RunConfig -> (MultiTaskModel, tasks), in the recipe's order; ``cfg.primary`` names the
    segmentation task (``primary_task``).

    ``label_values``: the labels file's values per column, for image-level tasks."""
    model_input = INPUTS.get(cfg.model.input)  # its channels are checked with the data
    seg = next(t for t in cfg.tasks if t.name == cfg.primary)
    seg_cls = TASKS.get(seg.kind)
    seg_params = typed(seg_cls.Config, seg.params, f"tasks.{seg.name}.params")
    out_channels = seg_cls.output_channels(seg_params, num_classes)
    # the primary first: a backbone with a branch per task (MTAN) decodes the first one's
    names = [cfg.primary, *(t.name or t.kind for t in cfg.tasks if t.name != cfg.primary)]
    backbone = build_backbone(
        cfg.model.backbone,
        cfg.model.params,
        model_input.channels or in_channels,
        out_channels,
        task_names=names,
    )
    for line in backbone.describe(cfg.data.image_size):
        log.info("model: %s", line)
    ctx = TaskContext(
        backbone,
        num_classes,
        in_channels,
        cfg.data.image_size,
        out_channels,
        cfg.model.input,
        dict(label_values or {}),
        cfg.data.label_resize,
    )
    spatial_mode(cfg.data.dims).check_model(cfg, backbone)
    tasks = [build_task(t, ctx) for t in cfg.tasks]
    heads = {t.name: head for t in tasks if (head := t.build_head()) is not None}
    film = None
    if cfg.model.film is not None:
        try:
            film = FiLMGenerator(cfg.model.film, backbone.film_channels)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    model = MultiTaskModel(
        backbone, heads, seg_name=cfg.primary, film=film, input_transform=model_input.transform
    )
    return model, tasks


def primary_task(tasks: list[Task], name: str) -> SegmentationTask:
    """The task named ``name``, the recipe's primary segmentation task."""
    task = next((t for t in tasks if t.name == name), None)
    if not isinstance(task, SegmentationTask):
        raise ConfigError(f"primary: {name!r} is not a segmentation task of this recipe")
    return task


def parameter_counts(cfg: RunConfig, in_channels: int, num_classes: int) -> dict[str, int]:
    """Parameters of the backbone, of the task heads, and in total, without data: image-level
    tasks are counted with two classes per labels column."""
    columns = [str(c) for t in cfg.tasks if (c := getattr(t.params, "column", None))]
    model, _ = build_model_and_tasks(
        cfg, in_channels, num_classes, {c: ["a", "b"] for c in columns}
    )
    backbone = sum(p.numel() for p in model.backbone.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"backbone": backbone, "heads": total - backbone, "total": total}


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
        label_values: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__()
        saved = build_dataclass(RunConfig, with_saved_defaults(config))
        self.cfg: RunConfig = resolve(saved, check=False)  # checked when it was loaded
        # every default spelled out: a checkpoint rebuilds the same network after one changes
        config = self.cfg.to_dict()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.model, self.tasks = build_model_and_tasks(
            self.cfg, in_channels, len(class_names), label_values
        )
        self.seg_task = primary_task(self.tasks, self.cfg.primary)
        self.terms = build_terms(self.cfg.terms, self.tasks, self.seg_task)
        self.teacher = build_teacher(self.model, self.terms)
        weighed: list[Task | Term] = [*self.tasks, *self.terms]
        self.weighting = build_weighting(
            self.cfg.weighting.kind,
            self.cfg.weighting.params,
            {t.name: t.weight for t in weighed},
            self.cfg.primary,
            {t.name: t.likelihood for t in weighed},
            [t.name for t in self.terms if t.needs.learns_without_annotation],
        )
        replacing = [t.name for t in self.terms if self.cfg.primary in t.replaces]
        if replacing and self.weighting.needs_primary_loss:
            raise ConfigError(
                f"weighting {self.cfg.weighting.kind!r} needs the {self.cfg.primary!r} loss "
                f"every step; terms {', '.join(replacing)} replace it (use weighting fixed)"
            )
        self.automatic_optimization = False  # the step is ours: ``training_step`` runs it
        self.train_step = TrainingStep(
            self.model,
            self.tasks,
            self.terms,
            self.weighting,
            self.teacher,
            StagePlan(self.cfg.train.stages, self.cfg.primary, self.cfg.train.lr),
            PoolForward(self.cfg.train.pool_forward),
            self.cfg.train.seed,
        )
        self.val_metrics = SegmentationMetrics(
            self.class_names, self.seg_task.params.ignore_index, self.cfg.metrics.empty
        )
        # the auxiliary tasks' own validation metrics (accuracy, box IoU, ...)
        self.task_metrics = torch.nn.ModuleDict(
            {t.name: m for t in self.aux_tasks if (m := t.metrics()) is not None}
        )
        self.case_index = {c: i for i, c in enumerate(val_case_ids or [])}
        self.lr = self.cfg.train.lr  # Lightning's LR finder reads and writes this attribute

    @property
    def aux_tasks(self) -> list[Task]:
        """Every task but the primary one."""
        return [t for t in self.tasks if t is not self.seg_task]

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.model(x, meta)

    @property
    def spatial(self) -> SpatialMode:
        """Slices or volumes (``data.dims``): how this model segments a whole case."""
        return spatial_mode(self.cfg.data.dims)

    def segment(
        self, x: torch.Tensor, meta: torch.Tensor | None = None, tta: bool = False
    ) -> torch.Tensor:
        """The one segmentation predictor (validation, ``evaluate``, ``predict``, ``compare``):
        logits of whole images (B, C, H, W), or of whole volumes (B, C, H, W, D) by MONAI's
        sliding-window inference over ``data.patch_size`` windows (Gaussian-weighted, 25 %
        overlap; volumes smaller than a window are padded). ``tta``: the mean with the
        horizontal mirror's logits, mirrored back."""
        logits = self._segment_once(x, meta).float()
        if tta:
            logits = (logits + self._segment_once(x.flip(-1), meta).float().flip(-1)) / 2
        return logits

    @property
    def predictor(self) -> MultiTaskModel:
        """The network inference runs: the student, or the EMA teacher where the recipe says
        ``model.predict_with: teacher`` and a term keeps one."""
        if self.cfg.model.predict_with == "teacher" and self.teacher is not None:
            return self.teacher.network
        return self.model

    def _segment_once(self, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        return cast(
            torch.Tensor, self.spatial.segment(self.predictor.segment, x, meta, self.cfg.data)
        )

    def predict_labels(
        self, x: torch.Tensor, meta: torch.Tensor | None = None, tta: bool = False
    ) -> torch.Tensor:
        """(B, C, H, W[, D]) images -> (B, H, W[, D]) class indices, by ``segment``."""
        return self.seg_task.decode(self.segment(x, meta, tta))

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` zero-padded at the end of each spatial axis to the backbone's size multiple
        (a whole volume through a 3D network, for the image-level heads)."""
        multiple = self.model.backbone.size_multiple
        if multiple is None:
            return x
        pad = []
        for size, m in zip(reversed(x.shape[2:]), reversed(multiple), strict=True):
            pad += [0, -size % m]
        return F.pad(x, pad) if any(pad) else x

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """One optimiser step (``TrainingStep``) through Lightning's optimiser (which counts
        it) and precision (AMP's scale, DDP's reducer by ``manual_backward``), then the
        schedule's step; logs the losses."""
        optimizer = cast(LightningOptimizer, self.optimizers())
        bs = batch["image"].shape[0]
        step = self.global_step
        self.log("train/lr", optimizer.param_groups[0]["lr"], batch_size=bs)
        optimisation = Optimisation(
            optimizer.optimizer,
            step=optimizer.step,
            scaler=getattr(self.trainer.precision_plugin, "scaler", None),
            clip=self.cfg.train.grad_clip,
            backward=self.manual_backward,
        )
        out = self.train_step(batch, step, optimisation, self.current_epoch)
        cast(Any, self.lr_schedulers()).step()
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in out.losses.items()}, batch_size=bs)
        self.log("train/loss", out.total.detach(), prog_bar=True, batch_size=bs)
        if self.cfg.train.stages:
            self.log("train/stage", float(self.train_step.stages.index(step)), batch_size=bs)
        if logs := self.weighting.logs():
            self.log_dict({f"train/{k}": v for k, v in logs.items()})
        return out.total.detach()  # Lightning's LR finder reads it

    def _sync_buffers_at_next_forward(self) -> None:
        """DDP broadcasts the first process's buffers (batch-norm statistics) before a
        forward only when the previous forward prepared a gradient sync, which under manual
        optimisation none does (Lightning prepares it in ``manual_backward``): ask for it
        before every training batch and each validation, as automatic optimisation had it."""
        ddp = self.trainer.strategy.model
        if isinstance(ddp, DistributedDataParallel):
            ddp.require_forward_param_sync = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._sync_buffers_at_next_forward()

    def on_validation_start(self) -> None:
        self._sync_buffers_at_next_forward()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STEP_OWNER_KEY] = STEP_OWNER  # ``engine.train.check_resumable`` reads it

    @property
    def val_aux_tasks(self) -> list[Task]:
        """Auxiliary tasks scored on validation batches (pair tasks need paired batches)."""
        return [t for t in self.aux_tasks if not t.needs.pairs]

    def score_batch(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Validation's (and ``evaluate``'s) work on one batch: the segmentation by the one
        predictor (``predict_labels``) into the metric states, each auxiliary task's metrics;
        returns the auxiliary tasks' and terms' losses. 3D: the heads see the whole
        (padded) volume, the segmentation is made window by window."""
        image, meta = batch["image"], batch.get("meta")
        cases = torch.tensor([self.case_index.get(c, 0) for c in batch["case_id"]])
        self.val_metrics.update(self.predict_labels(image, meta), batch["mask"], cases)
        aux = self.val_aux_tasks
        if not aux:
            return {}
        outputs = self.model(self.padded(image), meta)
        losses = {}
        for task in aux:
            target = task.target(batch)
            losses[task.name] = task.loss(task.output(outputs), target)
            if task.name in self.task_metrics:
                cast(Metric, self.task_metrics[task.name]).update(
                    task.metric_input(outputs[task.name]), task.metric_target(target)
                )
        ctx = self.train_step.term_context(self.global_step)
        losses.update({term.name: term(outputs, batch, ctx) for term in self.terms})
        return losses

    def compute_scores(self) -> dict[str, float]:
        """The metrics of every batch scored since the last call (``SegmentationMetrics``'
        keys, the auxiliary tasks' as ``task/<name>/<metric>``), then reset."""
        result = self.val_metrics.compute()
        self.val_metrics.reset()
        result.update({f"task/{k}": float(v) for k, v in self.compute_task_metrics().items()})
        return result

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        bs = batch["image"].shape[0]
        for name, loss in self.score_batch(batch).items():
            self.log(f"val/loss_{name}", loss, batch_size=bs, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        result = self.compute_scores()
        # torchmetrics synced the states already: every process holds the same values, so
        # sync_dist averages equal numbers (and keeps Lightning from warning under DDP).
        # val/dice, the per-case mean Dice at the training size, selects best.ckpt
        self.log("val/dice", result["dice/mean"], prog_bar=True, sync_dist=True)
        rest = {f"val/{k.removeprefix('task/')}": v for k, v in result.items() if k != "dice/mean"}
        self.log_dict(rest, sync_dist=True)

    def compute_task_metrics(self) -> dict[str, torch.Tensor]:
        """``{task/metric: value}`` of the auxiliary tasks' metrics, then reset them."""
        out = {}
        by_name = {t.name: t for t in self.tasks}
        for name, module in self.task_metrics.items():
            metric = cast(Metric, module)
            for key, value in metric.compute().items():
                value = value.float().flatten()
                for label, v in zip(by_name[name].metric_names(key), value, strict=False):
                    out[f"{name}/{label}"] = v
            metric.reset()
        return out

    def configure_optimizers(self) -> Any:  # Lightning's optimizer + scheduler config
        # FAMO's logits do not require grad: it steps them itself
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.cfg.train, self.lr)
        progress = self._progress()
        step = self.train_step
        step.progress = progress
        step.stages = StagePlan(
            self.cfg.train.stages,
            self.cfg.primary,
            self.cfg.train.lr,
            steps_per_epoch=_steps_per_epoch(self.trainer),
            progress=progress,
        )
        scheduler = build_scheduler(
            self.cfg.train, optimizer, progress, step.stages.lr_factor, step.stages.schedule
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _progress(self) -> RunProgress:
        """Run progress from the planned steps and, with ``train.max_minutes``, the clock."""
        total = self.trainer.estimated_stepping_batches
        timer = next((c for c in trainer_callbacks(self.trainer) if isinstance(c, Timer)), None)
        minutes = self.cfg.train.max_minutes
        return RunProgress(
            int(total) if math.isfinite(total) else 10**9,
            budget_s=60.0 * minutes if minutes and timer is not None else None,
            elapsed=(lambda: timer.time_elapsed("train")) if timer is not None else None,
        )


# new checkpoints say that mtlseg's training step counted their steps (manual optimisation)
STEP_OWNER_KEY, STEP_OWNER = "mtlseg_step", "manual-optimisation"


def trainer_callbacks(trainer: Any) -> list[Any]:
    """A Trainer's callbacks (an attribute Lightning's callback connector sets at run time)."""
    return list(trainer.callbacks)


def _steps_per_epoch(trainer: Any) -> int:
    batches = trainer.num_training_batches
    return int(batches) if math.isfinite(batches) and batches > 0 else 1
