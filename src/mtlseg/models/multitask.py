"""A backbone plus named auxiliary heads; forward returns ``{task_name: output}``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from mtlseg.errors import ConfigError
from mtlseg.models.base import Backbone

if TYPE_CHECKING:
    from mtlseg.models.film import FiLMGenerator


class MultiTaskModel(nn.Module):
    """Segmentation logits under ``seg_name`` and one entry per auxiliary head: a flat dict of
    tensors.

    Extra outputs of the segmentation are entries ``<seg_name>/<entry>``: the backbone's own
    (its declared ``output_features``, e.g. U2Net's side outputs) and those of a head
    registered under ``seg_name`` (deep supervision, which returns named entries).

    With a FiLM generator the backbone is conditioned on ``meta`` (B, len(META_FIELDS)),
    the slices' metadata vectors, which every call must then pass. ``input_transform``
    maps the images to what the backbone sees (``model.input``, e.g. LAB lightness).
    """

    def __init__(
        self,
        backbone: Backbone,
        heads: dict[str, nn.Module],
        seg_name: str = "segmentation",
        film: FiLMGenerator | None = None,
        input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.input_transform = input_transform
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.seg_name = seg_name
        self.film = film
        self._conditioning: tuple[torch.Tensor, torch.Tensor] | None = None
        if film is not None:  # validated once: the declared submodule must exist
            backbone.conditioned_module().register_forward_hook(self._condition)

    def _condition(self, module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        """FiLM (Perez et al. 2018) on the conditioned submodule's output: gamma * x + beta,
        per sample and channel (2 or 3 spatial dims)."""
        if self._conditioning is None:
            return output
        gamma, beta = self._conditioning
        shape = (*gamma.shape, *([1] * (output.dim() - 2)))
        return output * gamma.view(shape) + beta.view(shape)

    def _backbone(
        self, x: torch.Tensor, meta: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The backbone's forward, conditioned on ``meta`` when the model has FiLM."""
        if self.film is None:
            return self.backbone(self._input(x))
        if meta is None:
            raise ConfigError("this model is conditioned on slice metadata (FiLM): pass meta")
        self._conditioning = self.film(meta)
        try:
            return self.backbone(self._input(x))
        finally:
            self._conditioning = None

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_transform is None else self.input_transform(x)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.forward_with_features(x, meta)[0]

    def forward_with_features(
        self, x: torch.Tensor, meta: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(outputs, the backbone's shared features)``: gradient methods read the latter."""
        logits, features = self._backbone(x, meta)
        outputs = {self.seg_name: logits}
        for name in self.backbone.output_features:
            outputs[f"{self.seg_name}/{name}"] = features.pop(name)
        for name, head in self.heads.items():
            out = head(self.backbone.task_features(features, name))
            if name == self.seg_name:  # the primary task's head adds entries to its output
                outputs.update({f"{name}/{entry}": v for entry, v in out.items()})
            else:
                outputs[name] = out
        return outputs, features

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every task's gradient may reach: the backbone's and FiLM's."""
        modules = [self.backbone] + ([self.film] if self.film is not None else [])
        return [p for m in modules for p in m.parameters()]

    def task_parameters(self) -> list[nn.Parameter]:
        """Parameters of the task heads: each gets its own task's gradient."""
        return list(self.heads.parameters())

    def segment(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """Segmentation logits only, skipping the auxiliary heads (inference)."""
        return self._backbone(x, meta)[0]
