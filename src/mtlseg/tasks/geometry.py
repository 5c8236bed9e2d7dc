"""Dense geometric auxiliary tasks (paper 004's depth and surface normals): made from the
segmentation's own label on the fly (``distance``, ``normals``), or read from the dataset's
dense arrays where it has them (``depth``, ``normals`` with ``source: file``; NYUv2 as the
MTAN authors preprocess it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from mtlseg.errors import ConfigError
from mtlseg.metrics.geometry import DepthMetrics, NormalMetrics
from mtlseg.targets.geometry import boundary_normals, signed_distance, truncated
from mtlseg.tasks.base import Requirements, register_task
from mtlseg.tasks.selfsup import DenseParams, DenseTask

DISTANCE_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


@dataclass
class DistanceParams(DenseParams):
    features: str = "decoder"  # the last decoder stage: a full-resolution dense target
    truncate: float = 0.1  # distances are divided by this fraction of the image side, clipped
    loss: str = "l1"  # l1 | mse

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.truncate <= 0:
            raise ValueError(f"truncate must be positive, got {self.truncate}")
        if self.loss not in DISTANCE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(DISTANCE_LOSSES)}, got {self.loss!r}")


GP = TypeVar("GP", bound=DenseParams)


class GeometryTask(DenseTask[GP]):
    """A dense target at full resolution: ``features: decoder`` means the last (full
    resolution) decoder stage."""

    def feature(self) -> str:
        return self.ctx.backbone.resolve_features(self.params.features)[-1]

    def dense_array(self, batch: dict[str, Any], name: str) -> torch.Tensor:
        """The batch's dense target array ``name`` (B, C, H, W)."""
        dense = batch.get("dense") or {}
        if name not in dense:
            raise ConfigError(
                f"tasks.{self.name}: the data has no dense {name!r} arrays "
                f"(it has: {', '.join(dense) or 'none'}); see the nyuv2 data format"
            )
        return dense[name].float()


@register_task("distance")
class DistanceTask(GeometryTask[DistanceParams]):
    """The depth analogue: per foreground class, the signed distance to its boundary
    (negative inside), truncated at ``truncate`` x image side and scaled to [-1, 1]; one
    channel per foreground class, L1 (or MSE) loss. Metrics: abs and rel error of the
    scaled distance (rel over pixels at least one pixel from a boundary)."""

    Config = DistanceParams
    requires = Requirements(masks=True)

    def out_dim(self) -> int:
        return self.ctx.num_classes - 1

    def distance_px(self) -> float:
        return self.params.truncate * self.ctx.image_size

    def target(self, batch: dict[str, Any]) -> Any:
        sdf = signed_distance(batch["mask"], self.ctx.num_classes)
        return truncated(sdf, self.distance_px())

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return DISTANCE_LOSSES[self.params.loss](output.float(), target)

    def metrics(self) -> Metric:
        return DepthMetrics(min_target=0.5 / self.distance_px())

    def metric_target(self, target: Any) -> Any:
        return target, torch.ones_like(target, dtype=torch.bool)


@dataclass
class DepthParams(DenseParams):
    features: str = "decoder"
    array: str = "depth"  # the dataset's dense array to regress
    loss: str = "l1"  # l1 | mse

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in DISTANCE_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(DISTANCE_LOSSES)}, got {self.loss!r}")


@register_task("depth")
class DepthTask(GeometryTask[DepthParams]):
    """Paper 004's depth task on data that has depth (NYUv2 as the MTAN authors preprocess
    it): one channel regressed with L1 over the pixels that have a reading (depth != 0), as
    their code does. Metrics: abs and rel error in the data's units."""

    Config = DepthParams

    def out_dim(self) -> int:
        return 1

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        return Requirements(dense=params.array)

    def target(self, batch: dict[str, Any]) -> Any:
        depth = self.dense_array(batch, self.params.array)
        return depth, depth != 0

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        depth, valid = target
        if not valid.any():
            return output.float().sum() * 0  # no reading in the batch: nothing to learn
        return DISTANCE_LOSSES[self.params.loss](output.float()[valid], depth[valid])

    def metrics(self) -> Metric:
        return DepthMetrics(min_target=1e-3)


NORMAL_SOURCES = ("mask", "file")


@dataclass
class NormalsParams(DenseParams):
    features: str = "decoder"
    band: float = 0.05  # loss and metrics on pixels this fraction of the side from a boundary
    source: str = "mask"  # mask: from the label's distance field | file: the data's arrays
    array: str = "normal"  # source file: the dataset's dense array of (x, y, z) normals

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.band <= 0:
            raise ValueError(f"band must be positive, got {self.band}")
        if self.source not in NORMAL_SOURCES:
            raise ValueError(f"source must be mask or file, got {self.source!r}")


@register_task("normals")
class NormalsTask(GeometryTask[NormalsParams]):
    """The surface-normal analogue: per foreground class, the unit in-plane gradient of its
    signed distance (the outward normal of the nearest boundary), two channels (y, x) per
    class; loss 1 - cosine on the band of pixels within ``band`` x side of a boundary, as
    surface-normal losses are. Metrics: angle error (mean, median, within 11.25/22.5/30).

    ``source: file`` is paper 004's own task on data with normal maps (NYUv2): three
    channels (x, y, z), 1 - cosine over the pixels that have a normal (a non-zero vector),
    as the MTAN authors' code."""

    Config = NormalsParams

    @property
    def _shape(self) -> tuple[int, int]:
        """(vector groups, components): one (x, y, z) from files, one (y, x) per class."""
        return (1, 3) if self.params.source == "file" else (self.ctx.num_classes - 1, 2)

    def out_dim(self) -> int:
        groups, components = self._shape
        return groups * components

    @classmethod
    def requirements(cls, params: Any) -> Requirements:
        if params.source == "file":  # paper 004's own normals, from the data's arrays
            return Requirements(dense=params.array)
        return Requirements(masks=True)  # made from the mask's signed distance

    def target(self, batch: dict[str, Any]) -> Any:
        if self.params.source == "file":
            normals = self.dense_array(batch, self.params.array)[:, None]  # (B, 1, 3, H, W)
            return normals, normals.abs().sum(2) > 0
        sdf = signed_distance(batch["mask"], self.ctx.num_classes)
        normals, valid = boundary_normals(sdf, self.params.band * self.ctx.image_size)
        return normals, valid

    def _vectors(self, output: torch.Tensor) -> torch.Tensor:
        b, _, *spatial = output.shape
        return output.float().reshape(b, *self._shape, *spatial)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        normals, valid = target
        pred = F.normalize(self._vectors(output), dim=2)
        cos = (pred * normals).sum(2)
        if not valid.any():
            return (pred * 0).sum()  # no boundary in the batch: nothing to learn
        return (1 - cos[valid]).mean()

    def metrics(self) -> Metric:
        return NormalMetrics()

    def metric_input(self, output: Any) -> torch.Tensor:
        return self._vectors(output)

    def metric_target(self, target: Any) -> Any:
        return target
