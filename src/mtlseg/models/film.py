"""FiLM generator (paper 001, section 4.3): slice metadata -> per-channel scale and shift."""

from __future__ import annotations

import logging

import torch
from torch import nn

from mtlseg.config import FiLMConfig
from mtlseg.data.metadata import IDENTIFIER_FIELDS, field_indices

log = logging.getLogger(__name__)


def _mlp(c_in: int, hidden: int, c_out: int, layers: int) -> nn.Sequential:
    widths = [c_in] + [hidden] * (layers - 1) + [c_out]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        modules.append(nn.Linear(a, b))
        if i < layers - 1:
            modules.append(nn.ReLU(inplace=True))
    return nn.Sequential(*modules)


class FiLMGenerator(nn.Module):
    """``meta`` (B, len(META_FIELDS)) -> (gamma, beta), each (B, channels).

    The chosen fields are standardised with the training set's mean and std (buffers, so a
    checkpoint carries them) and fed to two MLPs of ``layers`` Linear layers, as the paper's
    two three-layer FCNs; gamma = 1 + MLP_scale, so a zero output leaves features unchanged.
    With ``missing: zero`` an unknown (NaN) field becomes 0 after standardisation: the mean.
    """

    columns: torch.Tensor  # the fields' positions in the metadata vector
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, cfg: FiLMConfig, channels: int) -> None:
        super().__init__()
        if not cfg.fields:
            raise ValueError("model.film.fields: give at least one metadata field")
        if cfg.layers < 1:
            raise ValueError("model.film.layers must be >= 1")
        self.fields = list(cfg.fields)
        for name in (f for f in self.fields if f in IDENTIFIER_FIELDS):
            log.warning(
                "model.film.fields: %r identifies the case, it does not describe the image: "
                "the network can recognise the case from it (in ACDC the patient number encodes "
                "the diagnosis, patients 1-20 DCM, 21-40 HCM, ...), a shortcut for every task "
                "and a leak for image-level ones",
                name,
            )
        self.register_buffer(
            "columns", torch.tensor(field_indices(cfg.fields, "model.film.fields"))
        )
        self.register_buffer("mean", torch.zeros(len(cfg.fields)))
        self.register_buffer("std", torch.ones(len(cfg.fields)))
        self.scale = _mlp(len(cfg.fields), cfg.hidden, channels, cfg.layers)
        self.shift = _mlp(len(cfg.fields), cfg.hidden, channels, cfg.layers)

    @torch.no_grad()
    def set_statistics(self, meta: torch.Tensor) -> None:
        """Standardisation from the training slices' metadata (NaN ignored, constant -> std 1)."""
        values = meta[:, self.columns].double()
        known = ~values.isnan()
        count = known.sum(0).clamp(min=1)
        mean = values.nan_to_num(0).sum(0) / count
        var = ((values - mean).nan_to_num(0) ** 2).sum(0) / count
        std = var.sqrt()
        self.mean.copy_(mean.float())
        self.std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)).float())

    def forward(self, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = ((meta[:, self.columns].float() - self.mean) / self.std).nan_to_num(0.0)
        return 1.0 + self.scale(m), self.shift(m)
