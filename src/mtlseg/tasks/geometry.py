"""Dense geometric auxiliary tasks from the mask (paper 004's depth and surface normals,
which need a depth sensor, made from the segmentation's own label on the fly)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mtlseg.metrics.geometry import DepthMetrics, NormalMetrics
from mtlseg.targets.geometry import boundary_normals, signed_distance, truncated
from mtlseg.tasks.base import register_task
from mtlseg.tasks.selfsup import DenseParams, DenseTask

DISTANCE_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


@dataclass
class DistanceParams(DenseParams):
    features: str = "decoder"  # the last decoder stage: a full-resolution dense target
    truncate: float = 0.1  # distances are divided by this fraction of the image side, clipped
    loss: str = "l1"  # l1 | mse

    def __post_init__(self) -> None:
        if self.truncate <= 0:
            raise ValueError(f"truncate must be positive, got {self.truncate}")
        if self.loss not in DISTANCE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(DISTANCE_LOSSES)}, got {self.loss!r}")


class GeometryTask(DenseTask):
    """A dense target at full resolution: ``features: decoder`` means the last (full
    resolution) decoder stage."""

    def feature(self) -> str:
        return self.ctx.backbone.resolve_features(self.params.features)[-1]

    def distance_px(self) -> float:
        return self.params.truncate * self.ctx.image_size


@register_task("distance")
class DistanceTask(GeometryTask):
    """The depth analogue: per foreground class, the signed distance to its boundary
    (negative inside), truncated at ``truncate`` x image side and scaled to [-1, 1]; one
    channel per foreground class, L1 (or MSE) loss. Metrics: abs and rel error of the
    scaled distance (rel over pixels at least one pixel from a boundary)."""

    Config = DistanceParams

    def out_dim(self) -> int:
        return self.ctx.num_classes - 1

    def target(self, batch):
        sdf = signed_distance(batch["mask"], self.ctx.num_classes)
        return truncated(sdf, self.distance_px())

    def loss(self, output, target):
        return DISTANCE_LOSSES[self.params.loss](output.float(), target)

    def metrics(self):
        return DepthMetrics(min_target=0.5 / self.distance_px())

    def metric_target(self, target):
        return target, torch.ones_like(target, dtype=torch.bool)


@dataclass
class NormalsParams(DenseParams):
    features: str = "decoder"
    band: float = 0.05  # loss and metrics on pixels this fraction of the side from a boundary

    def __post_init__(self) -> None:
        if self.band <= 0:
            raise ValueError(f"band must be positive, got {self.band}")


@register_task("normals")
class NormalsTask(GeometryTask):
    """The surface-normal analogue: per foreground class, the unit in-plane gradient of its
    signed distance (the outward normal of the nearest boundary), two channels (y, x) per
    class; loss 1 - cosine on the band of pixels within ``band`` x side of a boundary, as
    surface-normal losses are. Metrics: angle error (mean, median, within 11.25/22.5/30)."""

    Config = NormalsParams

    def out_dim(self) -> int:
        return 2 * (self.ctx.num_classes - 1)

    def target(self, batch):
        sdf = signed_distance(batch["mask"], self.ctx.num_classes)
        normals, valid = boundary_normals(sdf, self.params.band * self.ctx.image_size)
        return normals, valid

    def _vectors(self, output: torch.Tensor) -> torch.Tensor:
        b, _, *spatial = output.shape
        return output.float().reshape(b, self.ctx.num_classes - 1, 2, *spatial)

    def loss(self, output, target):
        normals, valid = target
        pred = F.normalize(self._vectors(output), dim=2)
        cos = (pred * normals).sum(2)
        if not valid.any():
            return (pred * 0).sum()  # no boundary in the batch: nothing to learn
        return (1 - cos[valid]).mean()

    def metrics(self):
        return NormalMetrics()

    def metric_input(self, output):
        return self._vectors(output)

    def metric_target(self, target):
        return target
