"""What the network sees of an image (``model.input``), by registry name.

``lightness`` (paper 002's colourisation): the L channel of CIE LAB of an RGB image, so a
colourisation head can predict a and b; the conversion runs on the batch's device, in
training and at inference alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mtlseg.registry import Registry
from mtlseg.targets.image import lab


@dataclass(frozen=True)
class ModelInput:
    transform: Callable[[torch.Tensor], torch.Tensor] | None  # None: the image as it is
    channels: int | None = None  # channels the network sees; None: the data's
    needs_channels: int | None = None  # channels the data must have


INPUTS: Registry[ModelInput] = Registry("model.input")
INPUTS.register("image")(ModelInput(None))
INPUTS.register("lightness")(ModelInput(lambda x: lab(x)[:, :1], channels=1, needs_channels=3))
