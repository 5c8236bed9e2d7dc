"""Slices or volumes: what differs between a 2D and a 3D run, chosen once from ``data.dims``
(``spatial_mode``) and asked by the engine, never branched on elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from monai.inferers import sliding_window_inference

from mtlseg.config import DataConfig, RunConfig, patch_size
from mtlseg.data.annotations import Annotations
from mtlseg.data.dataset import SliceDataset
from mtlseg.data.transforms import build_augmentation
from mtlseg.data.volumes import VolumeDataset
from mtlseg.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mtlseg.data.loading import LoadedCase, LoadedDataset

Predictor = Callable[..., torch.Tensor]  # (x, meta) -> segmentation logits


class SpatialMode:
    """What a run's data dimensionality decides: its datasets, what its network and its pool
    must be, how it segments a whole case, and how inference batches files."""

    name: str
    dims: int
    whole_cases: bool  # inference runs one case at a time (else slices of several files)
    export_refusal: str | None = None  # why an exported graph cannot hold it (None: it can)

    def datasets(
        self,
        cfg: DataConfig,
        root: Path,
        loaded: LoadedDataset,
        train: list[LoadedCase],
        val: list[LoadedCase],
        annotations: Annotations,
        dense_kinds: Any,
    ) -> tuple[SliceDataset | VolumeDataset, SliceDataset | VolumeDataset]:
        """The training and validation datasets of these cases."""
        raise NotImplementedError

    def check_pool(self, pool: set[str]) -> None:
        """Whether an unlabelled pool can be used."""
        raise NotImplementedError

    def check_model(self, cfg: RunConfig, backbone: Any) -> None:
        """The network is one of this mode's, and what it needs of the data is given."""
        raise NotImplementedError

    def segment(self, predictor: Predictor, x: torch.Tensor, meta: Any, cfg: DataConfig) -> Any:
        """Segmentation logits of whole cases."""
        raise NotImplementedError


class Slices(SpatialMode):
    """2D: the network sees slices (or images), training and inference alike."""

    name = "slices"
    dims = 2
    whole_cases = False  # inference batches the slices of several files together

    def datasets(
        self,
        cfg: DataConfig,
        root: Path,
        loaded: LoadedDataset,
        train: list[LoadedCase],
        val: list[LoadedCase],
        annotations: Annotations,
        dense_kinds: Any,
    ) -> tuple[SliceDataset | VolumeDataset, SliceDataset | VolumeDataset]:
        augment = build_augmentation(str(cfg.augment), dense_kinds)
        rule = cfg.label_resize
        return (
            SliceDataset(train, cfg.image_size, augment, annotations, rule),
            SliceDataset(val, cfg.image_size, annotations=annotations, label_resize=rule),
        )

    def check_pool(self, pool: set[str]) -> None:
        """An unlabelled pool is one of slices: always usable."""

    def check_model(self, cfg: RunConfig, backbone: Any) -> None:
        if backbone.spatial_dims != self.dims:
            raise ConfigError(
                f"data.dims={self.dims}: model.backbone={cfg.model.backbone} is a "
                f"{backbone.spatial_dims}D network; set data.dims=3"
            )

    def segment(self, predictor: Predictor, x: torch.Tensor, meta: Any, cfg: DataConfig) -> Any:
        """Segmentation logits of whole images (B, C, H, W)."""
        return predictor(x, meta)


class Volumes(SpatialMode):
    """3D: the network trains on patches of volumes and segments whole volumes by MONAI's
    sliding window over ``data.patch_size`` windows (Gaussian-weighted, 25 % overlap;
    volumes smaller than a window are padded)."""

    name = "volumes"
    dims = 3
    whole_cases = True  # one whole volume at a time
    export_refusal = (
        "this is a 3D model (data.dims=3): its inference is MONAI's sliding window over "
        "whole volumes, which mtlseg does not export; 2D models (also those trained on "
        "volume slices) can be exported"
    )

    def datasets(
        self,
        cfg: DataConfig,
        root: Path,
        loaded: LoadedDataset,
        train: list[LoadedCase],
        val: list[LoadedCase],
        annotations: Annotations,
        dense_kinds: Any,
    ) -> tuple[SliceDataset | VolumeDataset, SliceDataset | VolumeDataset]:
        if not loaded.is_volume:
            raise DataError(f"{root}: data.dims=3 trains on volumes, this dataset holds 2D images")
        rule, augment = cfg.label_resize, cfg.augment != "none"
        return (
            VolumeDataset(train, cfg.image_size, patch_size(cfg), augment, annotations, rule),
            VolumeDataset(val, cfg.image_size, annotations=annotations, label_resize=rule),
        )

    def check_pool(self, pool: set[str]) -> None:
        if pool:
            raise DataError(
                "an unlabelled pool (data.label_budget, data.unlabelled_dirs) is 2D-only"
            )

    def check_model(self, cfg: RunConfig, backbone: Any) -> None:
        if backbone.spatial_dims != self.dims:
            raise ConfigError(
                f"data.dims={self.dims}: model.backbone={cfg.model.backbone} is a "
                f"{backbone.spatial_dims}D network; use a 3D backbone (unet3d)"
            )
        multiple = backbone.size_multiple
        patch = patch_size(cfg.data)
        if multiple is not None and any(p % m for p, m in zip(patch, multiple, strict=True)):
            raise ConfigError(
                f"data.patch_size {patch}: {cfg.model.backbone} needs sizes that divide by "
                f"{list(multiple)} (its downsampling per axis)"
            )
        if cfg.model.film is not None:
            raise ConfigError(
                "model.film: FiLM conditions slices on their metadata; use data.dims=2"
            )

    def segment(self, predictor: Predictor, x: torch.Tensor, meta: Any, cfg: DataConfig) -> Any:
        """Segmentation logits of whole volumes (B, C, H, W, D), window by window."""
        logits = sliding_window_inference(
            x,
            roi_size=patch_size(cfg),
            sw_batch_size=4,
            predictor=predictor,
            overlap=0.25,
            mode="gaussian",
        )
        return cast(torch.Tensor, logits)  # one predictor output: a tensor


MODES: dict[int, SpatialMode] = {mode.dims: mode for mode in (Slices(), Volumes())}


def spatial_mode(dims: int) -> SpatialMode:
    """The mode of ``data.dims`` (2: slices, 3: volumes)."""
    if dims not in MODES:
        raise ConfigError(f"data.dims: expected 2 or 3, got {dims}")
    return MODES[dims]
