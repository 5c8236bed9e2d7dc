"""Self-supervised dense tasks: paper 002's (section 2.4) denoising, Canny edges and
colourisation, and Models Genesis' restoration for pretraining on the unlabelled pool.
Targets are made from the batch on its device every step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from mtlseg.models.heads import DenseHead
from mtlseg.targets.genesis import corrupt, to_unit
from mtlseg.targets.image import canny_edges, lab
from mtlseg.tasks.base import Requirements, Task, register_task


@dataclass
class DenseParams:
    features: str = "bottleneck"  # the feature the task's light decoder starts from
    hidden: int = 32  # channels of that decoder; 0: a 1x1 conv on the feature alone

    def __post_init__(self) -> None:
        if self.hidden < 0:
            raise ValueError(f"hidden must be >= 0, got {self.hidden}")


DP = TypeVar("DP", bound=DenseParams)


class DenseTask(Task[DP]):
    """A per-pixel target predicted by a ``DenseHead`` of ``out_dim`` channels."""

    Config = DenseParams

    def out_dim(self) -> int:
        raise NotImplementedError

    def feature(self) -> str:
        """The backbone feature the head starts from (``decoder``: the deepest stage)."""
        return self.ctx.backbone.resolve_features(self.params.features)[0]

    def build_head(self) -> nn.Module:
        name = self.feature()
        info = self.ctx.backbone.feature_info[name]
        return DenseHead(
            name,
            info.channels,
            info.stride,
            self.out_dim(),
            self.params.hidden,
            self.ctx.image_size,
        )


@dataclass
class DenoiseParams(DenseParams):
    # noise std as a fraction of each image's intensity range; paper: std 2 on 0..255
    std: float = 2 / 255

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")


@register_task("denoise")
class DenoiseTask(DenseTask[DenoiseParams]):
    """Paper 002, 2.4.1: in training the network sees the image plus Gaussian noise (every
    task then trains on the noisy input, as in the paper) and regresses the clean image
    with MSE. Validation and prediction see clean images."""

    Config = DenoiseParams

    def out_dim(self) -> int:
        return self.ctx.in_channels

    def training_input(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        flat = x.flatten(1)
        spread = (flat.max(1).values - flat.min(1).values)[:, None, None, None]
        return x + torch.randn_like(x) * self.params.std * spread

    def target(self, batch: dict[str, Any]) -> Any:
        return batch["image"].float()

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.mse_loss(output.float(), target)


@dataclass
class CannyParams(DenseParams):
    low: float = 0.1  # kornia.filters.canny thresholds on the [0, 1]-rescaled grey image
    high: float = 0.2
    sigma: float = 1.0  # Gaussian blur before the gradient

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.low <= self.high:
            raise ValueError(f"need 0 <= low <= high, got low={self.low}, high={self.high}")


@register_task("canny")
class CannyTask(DenseTask[CannyParams]):
    """Paper 002, 2.4.2: predict the image's Canny edge map (kornia, on device); one logit
    per pixel, BCE with logits."""

    Config = CannyParams
    likelihood = "classification"

    def out_dim(self) -> int:
        return 1

    def target(self, batch: dict[str, Any]) -> Any:
        p = self.params
        return canny_edges(batch["image"], p.low, p.high, p.sigma)

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(output.float(), target.float())


@register_task("colourise")
class ColouriseTask(DenseTask[DenseParams]):
    """Paper 002, 2.4.3: the network sees the L channel of CIE LAB only (``model.input:
    lightness``, for every task) and predicts a and b (MSE, each scaled to about [-1, 1])."""

    requires = Requirements(model_input="lightness", channels=3)

    def out_dim(self) -> int:
        return 2

    def target(self, batch: dict[str, Any]) -> Any:
        return lab(batch["image"])[:, 1:]

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.mse_loss(output.float(), target)


@dataclass
class GenesisParams(DenseParams):
    features: str = "decoder"  # the last decoder stage: the whole network restores
    hidden: int = 0  # a 1x1 conv, as the authors' output layer
    nonlinear: float = 0.9  # each corruption's probability (the authors' rates)
    shuffle: float = 0.5
    paint: float = 0.9
    outpaint: float = 0.8  # the share of painting that is out-painting
    blocks: int = 50  # windows shuffled per image

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("nonlinear", "shuffle", "paint", "outpaint"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")


@register_task("genesis")
class GenesisTask(DenseTask[GenesisParams]):
    """Models Genesis (Zhou et al., MICCAI 2019 / MedIA 2021, Sec. 2.1, eq. 1): the network
    sees each image corrupted by the authors' chain (``mtlseg.targets.genesis.corrupt``:
    local pixel shuffling, a non-linear intensity mapping, in- or out-painting, on the image
    min-max scaled to [0, 1] and mapped back to its own range) and restores the original
    with MSE. It reads no annotation, so it learns from the unlabelled pool too: in
    ``unet-genesis`` a first stage trains it alone (pretraining) and the rest fine-tunes the
    segmentation on clean images. Deviations: 2D slices, not 3D cubes; in the same run and
    optimiser as the fine-tuning (the authors pretrain once, apart); no flips."""

    Config = GenesisParams
    requires = Requirements(wants_pool=True)

    def out_dim(self) -> int:
        return self.ctx.in_channels

    def training_input(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        p = self.params
        unit, low, spread = to_unit(x.float())
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        out = corrupt(unit, g, p.nonlinear, p.shuffle, p.paint, p.outpaint, p.blocks)
        return (out * spread + low).to(x.dtype)

    def target(self, batch: dict[str, Any]) -> Any:
        return batch["image"].float()

    def loss(self, output: Any, target: Any) -> torch.Tensor:
        return F.mse_loss(output.float(), target)
