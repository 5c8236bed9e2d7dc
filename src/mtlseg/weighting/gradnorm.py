"""GradNorm (Chen et al. 2018): learn loss weights that equalise the tasks' gradient norms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtlseg.distributed import mean_over_processes, world_size
from mtlseg.errors import ConfigError
from mtlseg.weighting.base import WEIGHTINGS, BackwardContext, Weighting


@dataclass
class GradNormParams:
    alpha: float = 1.5  # restoring force towards equal training rates (paper: 0.12 - 3)
    feature: str | None = None  # W: a backbone feature (None: the one every task depends on)


@WEIGHTINGS.register("gradnorm")
class GradNormWeighting(Weighting[GradNormParams]):
    """GradNorm, eq. 1-2: with G_i = ||grad_W w_i L_i||, r_i = (L_i / L_i(0)) / mean_j (...),
    the weights w follow the gradient of L_grad = sum_i |G_i - mean(G) r_i^alpha| (target
    held constant) while the model follows sum_i w_i L_i with w held constant.

    W is a backbone feature every task's loss depends on (``feature``, by default the
    backbone's ``shared_feature``: the bottleneck, MTAN's last shared encoder block) rather
    than the last shared layer's weights, so it works for every backbone; G_i = w_i ||g_i||
    needs one backward from each loss to W, and no second-order term. The weights are
    K softmax(logits), so they stay positive and sum to K (the paper renormalises to K);
    the logits are trained by the model's optimiser, like the paper's.

    Under DDP, G_i and the loss ratios are those of the whole batch: the losses are averaged
    over the processes, and G_i = sqrt(sum_r G_ir^2) / R (W's rows are split between the R
    processes, each loss is the mean of theirs), so every process steps the same logits."""

    Config = GradNormParams
    syncs_gradients = True
    initial: torch.Tensor  # each loss at the first step (the inverse training rate's reference)

    def setup(self) -> None:
        super().setup()
        self.names = list(self.task_weights)
        self.logits = nn.Parameter(torch.zeros(len(self.names)))
        self.register_buffer("initial", torch.full((len(self.names),), float("nan")))

    def _scales(self, names: list[str]) -> torch.Tensor:
        index = [self.names.index(n) for n in names]
        return len(names) * torch.softmax(self.logits[index], dim=0)

    def weights(
        self, losses: dict[str, torch.Tensor], step: int, epoch: int = 0
    ) -> dict[str, torch.Tensor | float]:
        names = list(losses)
        scales = self._scales(names).detach()
        return {n: self.task_weights[n] * float(s) for n, s in zip(names, scales, strict=True)}

    def backward(
        self, losses: dict[str, torch.Tensor], total: torch.Tensor, ctx: BackwardContext
    ) -> None:
        feature = self.cfg.feature or ctx.shared_feature
        if feature not in ctx.features:
            raise ConfigError(
                f"weighting.params.feature={feature!r}: the backbone has no such "
                f"feature; it has: {', '.join(ctx.features)}"
            )
        shared = ctx.features[feature]
        names = list(losses)
        index = [self.names.index(n) for n in names]
        values = torch.stack([losses[n] * self.task_weights[n] for n in names])
        norms = torch.stack(
            [
                torch.autograd.grad(v, shared, retain_graph=True)[0].norm()
                for v in values  # each loss's gradient at W (a partial backward)
            ]
        )
        with torch.no_grad():
            norms, values = _whole_batch(norms.detach(), values.detach())
            first = torch.isnan(self.initial[index])
            self.initial[index] = torch.where(first, values.detach().float(), self.initial[index])
            ratio = values.detach() / self.initial[index].clamp(min=1e-12)
            rate = ratio / ratio.mean()
        with torch.enable_grad():
            g = self._scales(names) * norms.detach()
            target = (g.mean() * rate**self.cfg.alpha).detach()
            (grad,) = torch.autograd.grad((g - target).abs().sum(), self.logits)
        grad = grad * ctx.scale  # as if scaled by AMP like the model's gradients
        self.logits.grad = grad if self.logits.grad is None else self.logits.grad + grad
        self.last.update(
            {f"grad_norm_{n}": float(v) for n, v in zip(names, g.detach(), strict=True)}
        )
        ctx.backward(total)


def _whole_batch(  # pragma: no mutate block (DDP only)
    norms: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Under DDP, the whole batch's gradient norms at W and loss values from each process's."""
    world = world_size()
    if world == 1:
        return norms, values
    return (mean_over_processes(norms**2) / world).sqrt(), mean_over_processes(values)
