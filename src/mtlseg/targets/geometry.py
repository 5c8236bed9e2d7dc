"""Dense geometric targets from a label mask: the medical analogues of depth and surface
normals (paper 004), computed per foreground class on the fly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.transforms.utils import distance_transform_edt


def signed_distance(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Signed Euclidean distance in pixels to each foreground class's boundary, negative
    inside: (B, H, W) class indices -> (B, K-1, H, W) float. Boundaries lie between pixels,
    so the pixels on either side are at -0.5 and +0.5. A class absent from an image is
    +inf there (everything outside), a class filling it -inf.

    MONAI's ``distance_transform_edt`` (exact; cupy on CUDA, scipy on the CPU)."""
    b = mask.shape[0]
    classes = torch.arange(1, num_classes, device=mask.device)
    inside = (mask[:, None] == classes[None, :, None, None]).reshape(-1, *mask.shape[1:])
    d_in = torch.as_tensor(distance_transform_edt(inside.float()))
    d_out = torch.as_tensor(distance_transform_edt((~inside).float()))
    sdf = torch.where(inside, 0.5 - d_in, d_out - 0.5).float()
    present = inside.flatten(1).any(1)
    full = inside.flatten(1).all(1)
    inf = torch.tensor(float("inf"), device=sdf.device)
    sdf = torch.where(~present[:, None, None], inf, sdf)
    sdf = torch.where(full[:, None, None], -inf, sdf)
    return sdf.reshape(b, num_classes - 1, *mask.shape[1:]).to(mask.device)


def truncated(sdf: torch.Tensor, distance: float) -> torch.Tensor:
    """The signed distance divided by ``distance`` pixels and clipped to [-1, 1] (a
    truncated SDF: far pixels say only inside or outside, as depth saturates)."""
    return (sdf / distance).clamp(-1.0, 1.0)


def boundary_normals(sdf: torch.Tensor, band: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit in-plane gradient of the signed distance (outward normal of the nearest
    boundary), by central differences: (B, C, H, W) -> normals (B, C, 2, H, W) as (y, x),
    and valid (B, C, H, W): pixels within ``band`` pixels of a boundary with a defined
    gradient."""
    finite = torch.isfinite(sdf)
    s = torch.where(finite, sdf, torch.zeros_like(sdf))
    b, c, h, w = s.shape
    padded = F.pad(s.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    dy = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2
    dx = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2
    grad = torch.cat([dy, dx], dim=1).reshape(b, c, 2, h, w)
    norm = grad.norm(dim=2)
    valid = finite & (sdf.abs() <= band) & (norm > 1e-6)
    return grad / norm.clamp(min=1e-6).unsqueeze(2), valid
