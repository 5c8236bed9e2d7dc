"""Image-level auxiliary tasks: a class label and a bounding box per image (paper 002), the
scene and the classes present (paper 003)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAccuracy, MultilabelF1Score

from mtlseg.config import TaskConfig
from mtlseg.errors import ConfigError
from mtlseg.metrics.boxes import BoxMetrics
from mtlseg.metrics.classification import ClassificationMetrics
from mtlseg.models.heads import PooledHead
from mtlseg.tasks.base import Requirements, Task, TaskContext, register_task


@dataclass
class ClassificationParams:
    column: str = ""  # the labels file's column to predict (ACDC: pathology or phase)
    classes: list[str] | None = None  # class names in output order; default: the file's values
    features: str = "bottleneck"
    hidden: int = 64  # global average pool, Linear(C, hidden), ReLU, Linear(hidden, classes)
    loss: str = "ce"  # ce | bce: one sigmoid per class against the one-hot label (paper 003)

    def __post_init__(self) -> None:
        if not self.column:
            raise ValueError("column: name the labels file's column to predict")
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss: expected ce or bce, got {self.loss!r}")


CP = TypeVar("CP", bound=ClassificationParams)


@register_task("classification")
class ClassificationTask(Task[CP]):
    """Predict a case-level label (``case_labels.csv``) from pooled features; cross-entropy
    (paper 002 eq. 1's L_cls). Output (B, K) logits, target (B,) class indices."""

    Config = ClassificationParams
    likelihood = "classification"
    example = {"column": "grade"}

    def __init__(self, cfg: TaskConfig, ctx: TaskContext) -> None:
        super().__init__(cfg, ctx)
        p = self.params
        self.classes = list(p.classes) if p.classes else ctx.label_values.get(p.column, [])
        if len(self.classes) < 2:
            raise ConfigError(
                f"tasks.{self.name}: column {p.column!r} needs at least 2 classes, found "
                f"{self.classes} (is there a labels file with that column?)"
            )
        self.index = {c: i for i, c in enumerate(self.classes)}

    @classmethod
    def requirements(cls, params: ClassificationParams) -> Requirements:
        classes = tuple(params.classes) if params.classes else None
        return Requirements(labels=params.column, classes=classes, dims=(2, 3))

    def build_head(self) -> nn.Module:
        p = self.params
        info = self.ctx.backbone.feature_info[p.features]
        return PooledHead(p.features, info.channels, p.hidden, len(self.classes))

    def target(self, batch: dict[str, Any]) -> Any:
        values = batch["labels"][self.params.column]
        return torch.tensor([self.index[v] for v in values], device=batch["image"].device)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        if self.params.loss == "bce":
            onehot = F.one_hot(target, len(self.classes)).float()
            return F.binary_cross_entropy_with_logits(output.float(), onehot)
        return F.cross_entropy(output.float(), target)

    def metrics(self) -> ClassificationMetrics:
        return ClassificationMetrics(len(self.classes))

    def metric_names(self, key: str) -> list[str]:
        return [f"recall/{c}" for c in self.classes] if key == "recall" else [key]


@dataclass
class SceneParams(ClassificationParams):
    hidden: int = 256  # paper 003: 256 hidden units in 2D (128 in 3D)
    loss: str = "bce"  # paper 003 eq. (2)


@register_task("scene")
class SceneTask(ClassificationTask[SceneParams]):
    """Paper 003's scene task (ACDC: the pathology of the case): ``classification`` with the
    paper's defaults, a 256-unit hidden layer on the shared latent space and BCE (eq. 2)."""

    Config = SceneParams


@dataclass
class PresenceParams:
    features: str = "bottleneck"
    hidden: int = 256  # paper 003: 256 hidden units in 2D (128 in 3D)
    threshold: float = 0.5  # metrics: a class is predicted present above this probability


@register_task("presence")
class PresenceTask(Task[PresenceParams]):
    """Which foreground classes appear in the input (paper 003's class task, eq. 2 L_cla):
    one sigmoid per foreground class, BCE against presence made from the (augmented) mask on
    the fly: a 2D slice or a 3D patch. Output (B, K-1) logits, target (B, K-1) in {0, 1}."""

    Config = PresenceParams
    requires = Requirements(masks=True, dims=(2, 3))
    likelihood = "classification"

    def build_head(self) -> nn.Module:
        p = self.params
        info = self.ctx.backbone.feature_info[p.features]
        return PooledHead(p.features, info.channels, p.hidden, self.ctx.num_classes - 1)

    def target(self, batch: dict[str, Any]) -> Any:
        return mask_presence(batch["mask"], self.ctx.num_classes)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.float(), target.float())

    def metrics(self) -> MetricCollection:
        n, t = self.ctx.num_classes - 1, self.params.threshold
        return MetricCollection(
            {
                "accuracy": MultilabelAccuracy(n, threshold=t, average="macro"),
                "f1": MultilabelF1Score(n, threshold=t, average="macro"),
            }
        )

    def metric_input(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output.float())

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """(B, K-1) probability that each foreground class is present."""
        return torch.sigmoid(output.float())


def mask_presence(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, *spatial) labels -> (B, K-1) float: 1 where foreground class k appears."""
    flat = mask.flatten(1)
    classes = torch.arange(1, num_classes, device=mask.device)
    return (flat[:, None, :] == classes[None, :, None]).any(-1).float()


@dataclass
class BoxParams:
    scale: float = 1.0  # loss multiplier, to bring the box MSE to the other losses' scale
    features: str = "bottleneck"
    hidden: int = 64


@register_task("bbox")
class BoxTask(Task[BoxParams]):
    """Regress one box per image, (x1, y1, x2, y2) in [0, 1] (sigmoid outputs), with MSE
    times ``scale`` (paper 002 eq. 1's L_bbox).

    The target is the data's box (a box file at the dataset root; the union of an image's
    boxes) when it has one, else the box of all foreground of the (augmented) mask, made on
    device. Images without a box (none listed, or an empty mask) are left out of the loss
    and metrics. Target (B, 5): a 0/1 validity flag, then the box.
    """

    Config = BoxParams
    requires = Requirements(masks=True)  # a box file's boxes when there is one, else the mask's

    def build_head(self) -> nn.Module:
        p = self.params
        info = self.ctx.backbone.feature_info[p.features]
        return PooledHead(p.features, info.channels, p.hidden, 4)

    def target(self, batch: dict[str, Any]) -> Any:
        if "box" in batch:
            valid, box = batch["has_box"].float(), batch["box"].float()
        else:
            valid, box = mask_boxes(batch["mask"])
        return torch.cat([valid[:, None], box], dim=1).to(batch["image"].device)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        valid, box = target[:, 0] > 0, target[:, 1:]
        pred = torch.sigmoid(output.float())
        if not valid.any():
            return pred.sum() * 0.0  # keeps the graph; nothing to learn from this batch
        return self.params.scale * F.mse_loss(pred[valid], box[valid])

    def metrics(self) -> BoxMetrics:
        return BoxMetrics(self.ctx.image_size)

    def metric_names(self, key: str) -> list[str]:
        return [key]

    def metric_input(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output.float())


def mask_boxes(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) labels -> (valid (B,), boxes (B, 4)): the normalised box of all pixels > 0,
    pixel edges included (a single pixel at (0, 0) is (0, 0, 1/W, 1/H))."""
    fg = mask > 0
    b, h, w = fg.shape
    rows, cols = fg.any(2), fg.any(1)
    valid = rows.any(1)
    ar_h = torch.arange(h, device=mask.device)
    ar_w = torch.arange(w, device=mask.device)
    y1 = torch.where(rows, ar_h, h).min(1).values
    y2 = torch.where(rows, ar_h, -1).max(1).values + 1
    x1 = torch.where(cols, ar_w, w).min(1).values
    x2 = torch.where(cols, ar_w, -1).max(1).values + 1
    box = torch.stack([x1 / w, y1 / h, x2 / w, y2 / h], 1).float()
    return valid.float(), torch.where(valid[:, None], box, torch.zeros_like(box))
