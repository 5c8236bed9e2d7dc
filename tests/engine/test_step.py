"""engine/step.py: the one training step's update (AMP scale, unscale, clip, step) and the
refusal to resume a checkpoint whose steps Lightning counted."""

from __future__ import annotations

import pytest
import torch

from mtlseg.engine.step import Optimisation


def _net_and_loss():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    return net, lambda: ((net(x) - y) ** 2).mean() * 50.0  # a gradient norm well above 1


def _expected_after_one_clipped_sgd_step(clip: float) -> list[torch.Tensor]:
    net, loss = _net_and_loss()
    grads = torch.autograd.grad(loss(), list(net.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    factor = min(1.0, clip / float(norm))
    return [p.detach() - 0.1 * g * factor for p, g in zip(net.parameters(), grads, strict=True)]


def test_the_update_unscales_before_it_clips_then_steps_through_the_scaler():
    net, loss = _net_and_loss()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step = Optimisation(opt, scaler=scaler, clip=0.5)
    step.differentiate(loss())  # scaled by 1024
    scaled = [p.grad.clone() for p in net.parameters()]
    step.update()
    want = _expected_after_one_clipped_sgd_step(0.5)
    for p, w in zip(net.parameters(), want, strict=True):
        assert torch.allclose(p.detach(), w, atol=1e-6)  # clipping scaled gradients would not
    fresh, plain = _net_and_loss()
    unscaled = torch.autograd.grad(plain(), list(fresh.parameters()))
    assert torch.allclose(scaled[0], 1024.0 * unscaled[0], rtol=1e-5)


def test_an_overflowing_step_is_skipped_and_the_scale_backs_off():
    net, loss = _net_and_loss()
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step = Optimisation(opt, scaler=scaler, clip=0.5)
    step.differentiate(loss() * float("inf"))
    step.update()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    assert scaler.get_scale() == 512.0


def test_without_a_scaler_the_update_is_clip_then_step():
    net, loss = _net_and_loss()
    step = Optimisation(torch.optim.SGD(net.parameters(), lr=0.1), clip=0.5)
    step.differentiate(loss())
    step.update()
    for p, w in zip(net.parameters(), _expected_after_one_clipped_sgd_step(0.5), strict=True):
        assert torch.allclose(p.detach(), w, atol=1e-6)


@pytest.mark.parametrize("clip", [None, 0.0])
def test_no_clip_is_a_plain_step(clip):
    net, loss = _net_and_loss()
    step = Optimisation(torch.optim.SGD(net.parameters(), lr=0.1), clip=clip)
    step.differentiate(loss())
    step.update()
    for p, w in zip(net.parameters(), _expected_after_one_clipped_sgd_step(1e9), strict=True):
        assert torch.allclose(p.detach(), w, atol=1e-6)
