"""The LightningModule: wires model, tasks and weighting; Lightning owns the loop."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from monai.inferers import sliding_window_inference
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torchmetrics import Metric

from mtlseg.config import RunConfig, build_dataclass, patch_size, with_saved_defaults
from mtlseg.distributed import average_over_processes
from mtlseg.engine.optimizers import build_optimizer
from mtlseg.engine.requirements import check_requirements
from mtlseg.engine.schedulers import RunProgress, build_scheduler
from mtlseg.engine.stages import StagePlan
from mtlseg.errors import ConfigError, TrainingError
from mtlseg.metrics import SegmentationMetrics
from mtlseg.models import MultiTaskModel, build_backbone
from mtlseg.models.film import FiLMGenerator
from mtlseg.models.inputs import INPUTS
from mtlseg.tasks import TASKS, TaskContext, build_task
from mtlseg.tasks.base import Task
from mtlseg.tasks.segmentation import SegmentationTask
from mtlseg.terms import TERMS, Term, TermContext, build_terms
from mtlseg.weighting import BackwardContext, build_weighting

log = logging.getLogger(__name__)


@dataclass
class StepLosses:
    """What a training step's forward gives its backward."""

    losses: dict[str, torch.Tensor]  # per task and cross-task term, unweighted
    features: dict[str, torch.Tensor]  # the backbone's (gradient methods read them)
    total: torch.Tensor  # the weighting's combination of ``losses``
    autocast: bool = False  # the forward ran under a bf16/fp16 autocast (mixed precision)


def build_model_and_tasks(
    cfg: RunConfig,
    in_channels: int,
    num_classes: int,
    label_values: dict[str, list[str]] | None = None,
) -> tuple[MultiTaskModel, list[Task]]:
    """RunConfig -> (MultiTaskModel, tasks). The first task is the segmentation task.

    ``label_values``: the labels file's values per column, for image-level tasks."""
    check_requirements(cfg)  # what the configuration can give: 2D/3D, pair batches
    model_input = INPUTS.get(cfg.model.input)
    if model_input.needs_channels not in (None, in_channels):
        raise ConfigError(
            f"model.input={cfg.model.input} needs {model_input.needs_channels}-channel (RGB) "
            f"images; the data has {in_channels} channel(s)"
        )
    seg = cfg.tasks[0]
    seg_cls = TASKS.get(seg.kind)
    seg_params = build_dataclass(seg_cls.Config, seg.params, f"tasks.{seg.name}.params")
    out_channels = seg_cls.output_channels(seg_params, num_classes)
    names = [t.name or t.kind for t in cfg.tasks]
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
    dims = cfg.data.dims
    if backbone.spatial_dims != dims:
        raise ConfigError(
            f"data.dims={dims}: model.backbone={cfg.model.backbone} is a "
            f"{backbone.spatial_dims}D network; "
            + ("use a 3D backbone (unet3d)" if dims == 3 else "set data.dims=3")
        )
    multiple = backbone.size_multiple
    if dims == 3 and multiple is not None:
        patch = patch_size(cfg.data)
        if any(p % m for p, m in zip(patch, multiple, strict=True)):
            raise ConfigError(
                f"data.patch_size {patch}: {cfg.model.backbone} needs sizes that divide by "
                f"{list(multiple)} (its downsampling per axis)"
            )
    if dims == 3 and cfg.model.film is not None:
        raise ConfigError("model.film: FiLM conditions slices on their metadata; use data.dims=2")
    tasks = [build_task(t, ctx) for t in cfg.tasks]
    heads = {t.name: head for t in tasks if (head := t.build_head()) is not None}
    film = None
    if cfg.model.film is not None:
        try:
            film = FiLMGenerator(cfg.model.film, backbone.film_channels)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    model = MultiTaskModel(
        backbone, heads, seg_name=tasks[0].name, film=film, input_transform=model_input.transform
    )
    return model, tasks


def with_resolved_task_params(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with every task's and term's params spelled out (defaults included), so a
    checkpoint rebuilds the same heads even after a default changes (e.g. deep supervision)."""
    out = dict(config)
    for key, registry in (("tasks", TASKS), ("terms", TERMS)):
        items = []
        for i, raw in enumerate(config.get(key) or []):
            cls = registry.get(raw["kind"])
            params = build_dataclass(cls.Config, raw.get("params") or {}, f"{key}.{i}.params")
            items.append({**raw, "params": dataclasses.asdict(params)})
        if key in config:
            out[key] = items
    return out


def parameter_counts(cfg: RunConfig, in_channels: int, num_classes: int) -> dict[str, int]:
    """Parameters of the backbone, of the task heads, and in total, without data: image-level
    tasks are counted with two classes per labels column."""
    columns = [str(t.params["column"]) for t in cfg.tasks if t.params.get("column")]
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
        config = with_resolved_task_params(with_saved_defaults(config))
        self.save_hyperparameters()  # the resolved config: later default changes do not apply
        self.cfg: RunConfig = build_dataclass(RunConfig, config)
        self.class_names = list(class_names)
        self.model, self.tasks = build_model_and_tasks(
            self.cfg, in_channels, len(class_names), label_values
        )
        self.terms = build_terms(self.cfg.terms, self.tasks)
        self.teacher = build_teacher(self.model, self.terms)
        weighed: list[Task | Term] = [*self.tasks, *self.terms]
        self.weighting = build_weighting(
            self.cfg.weighting.kind,
            self.cfg.weighting.params,
            {t.name: t.weight for t in weighed},
            self.tasks[0].name,
            {t.name: t.likelihood for t in weighed},
            [t.name for t in self.terms if t.needs.learns_without_annotation],
        )
        replacing = [t.name for t in self.terms if self.tasks[0].name in t.replaces]
        if replacing and self.weighting.needs_primary_loss:
            raise ConfigError(
                f"weighting {self.cfg.weighting.kind!r} needs the {self.tasks[0].name!r} loss "
                f"every step; terms {', '.join(replacing)} replace it (use weighting fixed)"
            )
        self._pending: StepLosses | None = None
        self._run_progress: RunProgress | None = None
        self.stages = StagePlan(self.cfg.train.stages, self.tasks[0].name, self.cfg.train.lr)
        self.val_metrics = SegmentationMetrics(
            self.class_names, self.seg_task.params.ignore_index, self.cfg.metrics.empty
        )
        # the auxiliary tasks' own validation metrics (accuracy, box IoU, ...)
        self.task_metrics = torch.nn.ModuleDict(
            {t.name: m for t in self.tasks[1:] if (m := t.metrics()) is not None}
        )
        self.case_index = {c: i for i, c in enumerate(val_case_ids or [])}
        self.lr = self.cfg.train.lr  # Lightning's LR finder reads and writes this attribute

    @property
    def seg_task(self) -> SegmentationTask:
        return cast(SegmentationTask, self.tasks[0])

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.model(x, meta)

    @property
    def volumetric(self) -> bool:
        return self.cfg.data.dims == 3

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
            return cast(MultiTaskModel, self.teacher.module)
        return self.model

    def _segment_once(self, x: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
        if not self.volumetric:
            return self.predictor.segment(x, meta)
        logits = sliding_window_inference(
            x,
            roi_size=patch_size(self.cfg.data),
            sw_batch_size=4,
            predictor=self.predictor.segment,
            overlap=0.25,
            mode="gaussian",
        )
        return cast(torch.Tensor, logits)  # one predictor output: a tensor

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

    def compute_losses(self, batch: dict[str, Any], step: int | None = None) -> StepLosses:
        """The public training step's forward: every task's and cross-task term's loss that
        trains at ``step`` (all when None), the backbone's features, and the weighting's
        total (what is logged as ``train/loss``). A non-finite loss is an error naming it."""
        tasks, terms = self.tasks, self.terms
        if step is not None:
            self.enter_stage(step)
            names = self.stages.active(step, [t.name for t in tasks], "tasks")
            tasks = [t for t in tasks if t.name in names]
            names = self.stages.active(step, [t.name for t in terms], "terms")
            terms = [t for t in terms if t.name in names]
        replaced = {name for term in terms for name in term.replaces}
        tasks = [t for t in tasks if t.name not in replaced]
        outputs: dict[str, Any] = {}
        features: dict[str, torch.Tensor] = {}
        if tasks or any(term.reads_outputs for term in terms):
            x = batch["image"]
            g = self.step_generator(step or 0, salt=1)
            for task in tasks:  # e.g. denoising trains every task on a noisy input
                x = task.training_input(x, g)
            outputs, features = self._forward(x, batch)
        # a task that needs an annotation learns from the labelled rows only (the pool's
        # rows carry zero masks for batching, never read)
        labelled = batch.get("labelled")
        annotated = (outputs, batch)
        if labelled is not None and not bool(labelled.all()):
            annotated = (select_rows(outputs, labelled), select_rows(batch, labelled))
        losses = {}
        for t in tasks:
            out, b = (outputs, batch) if t.needs.reads_whole_batch else annotated
            losses[t.name] = t.loss(t.output(out), t.target(b))
        ctx = self.term_context(step or 0)
        for term in terms:
            out, b = (outputs, batch) if term.needs.reads_whole_batch else annotated
            losses[term.name] = term(out, b, ctx)
        for name, value in losses.items():
            if not torch.isfinite(value):
                raise TrainingError(
                    f"step {step}: loss of task {name!r} is {value.item()} "
                    "(lower train.lr, or check the data for extreme values)"
                )
        total = self.weighting(losses, step or 0, self.current_epoch)
        autocast = torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")
        return StepLosses(losses, features, total, autocast)

    def _forward(
        self, x: torch.Tensor, batch: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The training forward. ``train.pool_forward: separate`` (default) runs the labelled
        rows and the pool's rows as two batches, so batch norm never normalises one with the
        other's statistics; ``joint`` (SSL4MIS's way) runs them as one batch, which lets the
        network set the labelled rows apart in its deep batch-norm layers (docs/archive.md,
        "Batch norm and the pool")."""
        labelled = batch.get("labelled")
        meta = batch.get("meta")
        if (
            self.cfg.train.pool_forward == "joint"
            or labelled is None
            or bool(labelled.all())
            or not bool(labelled.any())
        ):
            return self.model.forward_with_features(x, meta)
        parts = [
            self.model.forward_with_features(
                x[rows], meta[rows] if isinstance(meta, torch.Tensor) else meta
            )
            for rows in (labelled, ~labelled)
        ]
        order = torch.cat([labelled.nonzero()[:, 0], (~labelled).nonzero()[:, 0]])
        inverse = torch.argsort(order)
        return (
            merge_rows(parts[0][0], parts[1][0], inverse),
            merge_rows(parts[0][1], parts[1][1], inverse),
        )

    def enter_stage(self, step: int) -> None:
        """What a stage does at its first step: a stage with ``reset_teacher`` makes the EMA
        teacher a copy of the student (decided by the step alone, so a resumed run does it
        exactly once)."""
        stage = self.stages.stage(step)
        if self.teacher is None or stage is None or not stage.reset_teacher:
            return
        if self.stages.starts(step):
            with torch.no_grad():
                for mine, theirs in zip(
                    self.teacher.module.state_dict().values(),
                    self.model.state_dict().values(),
                    strict=True,
                ):
                    mine.copy_(theirs)
            self.teacher.n_averaged.fill_(1)  # the copy counts as its first average

    def apply_update(self, step: StepLosses, scale: float = 1.0) -> None:
        """The public training step's backward: fill every parameter's ``.grad`` as the
        weighting decides (loss weightings differentiate the total, an aggregator combines
        the task gradients). ``scale``: the AMP loss scale ``step.total`` already carries."""
        ctx = BackwardContext(
            shared_params=self.model.shared_parameters(),
            task_params=self.model.task_parameters(),
            features=step.features,
            scale=scale,
            shared_feature=self.model.backbone.shared_feature,
            mixed_precision=step.autocast,
        )
        self.weighting.backward(step.losses, step.total, ctx)
        if self.weighting.syncs_gradients:  # DDP's reducer is off for it (on_train_start)
            average_over_processes([p.grad for p in self.parameters() if p.grad is not None])

    def optimisation_step(
        self, batch: dict[str, Any], optimizer: torch.optim.Optimizer, step: int = 0
    ) -> StepLosses:
        """One whole training step outside Lightning (benchmarks, tools): ``compute_losses``,
        ``apply_update``, ``optimizer.step()``, the teacher's update; no AMP scaling, no
        gradient clipping."""
        out = self.compute_losses(batch, step)
        optimizer.zero_grad(set_to_none=True)
        self.apply_update(out)
        optimizer.step()
        self.update_teacher()
        return out

    def update_teacher(self) -> None:
        """The EMA teacher follows the student after each optimiser step (if there is one)."""
        if self.teacher is not None:
            self.teacher.update_parameters(self.model)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.update_teacher()

    def term_context(self, step: int) -> TermContext:
        """What the terms may use this step: progress, the student's and teacher's forward."""
        teacher = None
        if self.teacher is not None:
            network = cast(MultiTaskModel, self.teacher.module)

            def teacher(x: torch.Tensor, meta: torch.Tensor | None = None) -> dict:
                with torch.no_grad():
                    return network(x, meta)

        generator = self.step_generator(step)
        return TermContext(step, self._progress_now(step), self.model, teacher, generator)

    def step_generator(self, step: int, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded by the run's seed, the step, the process and ``salt`` (one
        stream per user): a resumed run draws what an uninterrupted one did."""
        seed = (self.cfg.train.seed * 1_000_003 + step) * 64 + self.global_rank
        return torch.Generator().manual_seed(seed * 8 + salt if salt else seed)

    def _progress_now(self, step: int) -> float:
        """The run's progress at ``step`` in [0, 1] (the LR schedule's measure)."""
        if self._trainer is None:
            return 0.0
        if self._run_progress is None:
            self._run_progress = self._progress()
        return float(self._run_progress(step))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.compute_losses(batch, self.global_step)
        self._pending = out  # for backward: gradient methods need the losses and features
        bs = batch["image"].shape[0]
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in out.losses.items()}, batch_size=bs)
        self.log("train/loss", out.total.detach(), prog_bar=True, batch_size=bs)
        if self._trainer is not None:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=bs)
        if self.cfg.train.stages:
            self.log("train/stage", float(self.stages.index(self.global_step)), batch_size=bs)
        return out.total

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Lightning's backward hook: ``apply_update`` with the step's losses; ``loss`` is
        the total, already scaled under AMP."""
        if self._pending is None:  # not from training_step (e.g. Lightning's LR finder internals)
            loss.backward(*args, **kwargs)
            return
        step, self._pending = self._pending, None
        self.apply_update(dataclasses.replace(step, total=loss), self._loss_scale())

    def _loss_scale(self) -> float:
        """The AMP grad scaler's current factor (1 without one)."""
        if self._trainer is None:
            return 1.0
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _ddp_without_reducer(self) -> DistributedDataParallel | None:
        """The DDP wrapper when the weighting syncs gradients itself (None otherwise)."""
        ddp = self.trainer.strategy.model if self._trainer is not None else None
        if self.weighting.syncs_gradients and isinstance(ddp, DistributedDataParallel):
            return ddp
        return None

    def on_train_start(self) -> None:
        """Under DDP, a weighting that reads gradients averages them itself: DDP's reducer,
        which would average each process's own gradients during backward, is switched off."""
        if (ddp := self._ddp_without_reducer()) is not None:
            ddp.require_backward_grad_sync = False

    def _broadcast_buffers_at_next_forward(self) -> None:
        """Without its reducer DDP stops broadcasting the first process's buffers (BatchNorm
        statistics) before each forward; ask for it, as it does with the reducer on."""
        if (ddp := self._ddp_without_reducer()) is not None:
            ddp.require_forward_param_sync = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._broadcast_buffers_at_next_forward()

    def on_validation_start(self) -> None:
        self._broadcast_buffers_at_next_forward()

    def on_after_backward(self) -> None:
        logs = self.weighting.logs()
        if logs:
            self.log_dict({f"train/{k}": v for k, v in logs.items()})

    @property
    def val_aux_tasks(self) -> list[Task]:
        """Auxiliary tasks scored on validation batches (pair tasks need paired batches)."""
        return [t for t in self.tasks[1:] if not t.needs.pairs]

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
        ctx = self.term_context(self.global_step if self._trainer is not None else 0)
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
        if self._trainer is not None:
            self.stages = StagePlan(
                self.cfg.train.stages,
                self.tasks[0].name,
                self.cfg.train.lr,
                steps_per_epoch=_steps_per_epoch(self.trainer),
                progress=progress,
            )
        scheduler = build_scheduler(
            self.cfg.train, optimizer, progress, self.stages.lr_factor, self.stages.schedule
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def _progress(self) -> RunProgress:
        """Run progress from the planned steps and, with ``train.max_minutes``, the clock."""
        if self._trainer is None:
            return RunProgress(1)
        total = self.trainer.estimated_stepping_batches
        timer = next((c for c in trainer_callbacks(self.trainer) if isinstance(c, Timer)), None)
        minutes = self.cfg.train.max_minutes
        return RunProgress(
            int(total) if math.isfinite(total) else 10**9,
            budget_s=60.0 * minutes if minutes and timer is not None else None,
            elapsed=(lambda: timer.time_elapsed("train")) if timer is not None else None,
        )


def build_teacher(model: MultiTaskModel, terms: list[Term]) -> AveragedModel | None:
    """The EMA teacher the terms ask for (one, shared), or None. torch's ``AveragedModel``
    over parameters and buffers (batch-norm statistics) alike, averaged as the terms'
    ``TeacherSpec`` says; checkpointed with the module."""
    specs = {t.teacher for t in terms if t.teacher is not None}
    if not specs:
        return None
    if len(specs) > 1:
        raise ConfigError(
            "terms: one EMA teacher is kept; the terms ask for "
            + ", ".join(f"decay {s.decay} (ramp {s.ramp})" for s in specs)
        )
    spec = specs.pop()

    def ema(teacher: torch.Tensor, student: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        a = min(1.0 - 1.0 / (float(n) + 1.0), spec.decay) if spec.ramp else spec.decay
        return a * teacher + (1.0 - a) * student

    teacher = AveragedModel(model, avg_fn=ema, use_buffers=True)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def select_rows(value: Any, rows: torch.Tensor) -> Any:
    """``value`` (a batch or the model's outputs: tensors, lists, dicts of them) restricted to
    the samples where ``rows`` (B,) is true: dim 0 of tensors and lists of length B."""
    n = rows.shape[0]
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n:
        return value[rows]
    if isinstance(value, dict):
        return {k: select_rows(v, rows) for k, v in value.items()}
    if isinstance(value, list) and len(value) == n:
        keep = rows.tolist()
        return [v for v, k in zip(value, keep, strict=True) if k]
    return value


def merge_rows(first: Any, second: Any, inverse: torch.Tensor) -> Any:
    """The outputs of two row groups put back in batch order (``inverse``: the batch position
    of each row of ``first`` then ``second``, argsorted); the inverse of ``select_rows``. A
    tensor's row dimension is its first one whose sizes are the two groups' (dim 1 of a
    stack of per-stage outputs, (stages, B, ...))."""
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        n = len(inverse)
        for dim in range(first.dim()):
            if first.shape[dim] + second.shape[dim] == n and all(
                a == b
                for d, (a, b) in enumerate(zip(first.shape, second.shape, strict=True))
                if d != dim
            ):
                joined = torch.cat([first, second], dim)
                return joined.index_select(dim, inverse.to(first.device))
        raise ValueError(f"no row dimension in outputs of shapes {first.shape}, {second.shape}")
    if isinstance(first, dict):
        return {k: merge_rows(v, second[k], inverse) for k, v in first.items()}
    if isinstance(first, list) and len(first) + len(second) == len(inverse):
        items = [*first, *second]
        return [items[i] for i in inverse.tolist()]
    if isinstance(first, list):  # a list of per-row tensors (e.g. side outputs)
        return [merge_rows(a, b, inverse) for a, b in zip(first, second, strict=True)]
    return first


def trainer_callbacks(trainer: Any) -> list[Any]:
    """A Trainer's callbacks (an attribute Lightning's callback connector sets at run time)."""
    return list(trainer.callbacks)


def _steps_per_epoch(trainer: Any) -> int:
    batches = trainer.num_training_batches
    return int(batches) if math.isfinite(batches) and batches > 0 else 1
