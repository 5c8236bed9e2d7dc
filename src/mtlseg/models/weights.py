"""Loading a local pretrained ``state_dict`` (torchvision key names) into an encoder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mtlseg.errors import ConfigError

log = logging.getLogger(__name__)

# (key, tensor from the file, tensor of the module) -> adapted tensor, or None to keep as is
Adapter = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor | None]


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file does not exist (model.params.weights)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"{path}: not a readable PyTorch weights file ({err})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(
            f"{path}: expected a state_dict (name -> tensor), got {type(state).__name__}"
        )
    return state


def load_local_weights(
    module: nn.Module, path: Path | str, what: str, adapt: Adapter | None = None
) -> dict[str, list[str]]:
    """Load ``path`` non-strictly into ``module``; ``adapt`` may reshape a tensor first.

    Returns and logs the ``missing`` keys (left at their initialisation) and the
    ``unexpected`` ones (in the file, not in the module, e.g. a classifier). A key present
    in both with another shape (after ``adapt``) is an error naming the file and the key.
    """
    state = dict(read_state_dict(path))
    own = module.state_dict()
    if adapt is not None:
        for k, v in list(state.items()):
            if k in own and (new := adapt(k, v, own[k])) is not None:
                state[k] = new
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if wrong:
        raise ConfigError(
            f"{path}: {len(wrong)} weight(s) have another shape than the {what}, e.g. "
            f"{wrong[0]} (another width or number of input channels?)"
        )
    result = module.load_state_dict(state, strict=False)
    report = {"missing": sorted(result.missing_keys), "unexpected": sorted(result.unexpected_keys)}
    log.info(
        "%s: loaded %d tensors into the %s; %d missing, %d unexpected (e.g. %s)",
        path,
        len(state) - len(report["unexpected"]),
        what,
        len(report["missing"]),
        len(report["unexpected"]),
        report["unexpected"][:3],
    )
    return report
