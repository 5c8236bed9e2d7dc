"""The exported computation: raw image -> normalisation -> resize -> network -> labels.

It is ``mtlseg predict`` for one 2D image, written as one ``nn.Module`` so that the exported
file needs nothing from mtlseg: per-image normalisation (statistics in float64, as
``mtlseg.data.loading``), the antialiased bilinear resize to the training size
(``mtlseg.data.dataset.model_input``), the network (``MultiTaskModel.segment``), the logits
resized back to the image's own size (bilinear) and the segmentation task's ``decode``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mtlseg.errors import ConfigError

if TYPE_CHECKING:
    from mtlseg.engine.module import MultiTaskModule

Stats = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _zscore(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xd = x.double()  # written out: the ONNX exporter mistypes std_mean on float64
    mean = xd.mean(dim=(2, 3), keepdim=True)
    std = (xd - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
    return mean.float(), std.clamp_min(1e-8).float()


def _minmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    return low, (high.double() - low.double()).clamp_min(1e-8).float()


# the per-image form of each of ``mtlseg.data.loading.NORMALIZATIONS`` that a graph can hold
GRAPH_NORMALIZATIONS: dict[str, Stats] = {"zscore": _zscore, "minmax": _minmax}


class SegmentationGraph(nn.Module):
    """(B, C, H, W) raw float pixels -> labels (B, H, W) uint8 at the input's size, and the
    network's logits (B, K, S, S) at the training size ``S``.

    ``normalize=False``: the input is already normalised (volumes, which mtlseg normalises
    over the whole case, not slice by slice)."""

    def __init__(self, module: MultiTaskModule, normalize: bool = True) -> None:
        super().__init__()
        method = module.cfg.data.normalization
        if normalize and method not in GRAPH_NORMALIZATIONS:
            raise ConfigError(
                f"normalization {method!r} cannot be put in the graph (supported: "
                f"{', '.join(GRAPH_NORMALIZATIONS)}); export with --normalization outside"
            )
        self.network = module.predictor
        self.decoder = module.seg_task
        self.stats = GRAPH_NORMALIZATIONS[method] if normalize else None
        self.size = int(module.cfg.data.image_size)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(
            image, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True
        )
        if self.stats is not None:  # statistics of the full-size image, as mtlseg computes them
            offset, scale = self.stats(image)
            x = (x - offset) / scale
        logits = self.network.segment(x).float()
        full = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self.decoder.decode(full).to(torch.uint8), logits
