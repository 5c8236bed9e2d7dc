"""Semi-supervised terms (issue 21): the EMA teacher and the mean-teacher consistency."""

from __future__ import annotations

import math

import pytest
import torch

from mtlseg.config import load_config
from mtlseg.engine.data import prepare_data
from mtlseg.engine.inference import load_module
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.train import loaders, train
from mtlseg.terms.mean_teacher import sigmoid_rampup
from tests.conftest import TINY_UNET

CLASSES = ["background", "foreground"]


def _module(*extra: str) -> MultiTaskModule:
    torch.manual_seed(0)
    cfg = load_config("unet-mean-teacher", [*TINY_UNET, *extra])
    return MultiTaskModule(cfg.to_dict(), 3, CLASSES).train()


def _batch(n: int = 4, labelled: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 32, 32, dtype=torch.long)
    mask[:, 8:20, 8:20] = 1
    return {
        "image": torch.rand(n, 3, 32, 32, generator=g),
        "mask": mask,
        "labelled": torch.tensor([True] * labelled + [False] * (n - labelled)),
    }


def test_the_teacher_is_torchs_ema_of_the_student_with_the_mean_teacher_ramp():
    module = _module()
    opt = torch.optim.SGD(module.model.parameters(), lr=0.5)
    teacher = dict(module.teacher.module.named_parameters())
    name = "backbone.out.conv.conv.weight"
    seen = []
    for step in range(3):
        module.optimisation_step(_batch(), opt, step)
        seen.append(dict(module.model.named_parameters())[name].detach().clone())
    # update n (from 0): a copy first, then a = min(1 - 1/(n + 1), 0.99): 1/2, 2/3
    expected = seen[0]
    for n, student in ((1, seen[1]), (2, seen[2])):
        a = min(1 - 1 / (n + 1), 0.99)
        expected = a * expected + (1 - a) * student
    assert torch.allclose(teacher[name], expected, atol=1e-6)
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_the_consistency_is_zero_when_teacher_and_student_agree_and_trains_the_student_only():
    module = _module("terms.0.params.noise=0.0")
    batch = _batch()
    module.update_teacher()  # the first update copies the student
    module.eval()  # batch norm on running statistics: teacher and student compute alike
    ctx = module.term_context(0)
    ctx.progress = 1.0  # past the ramp-up: weight 1
    (term,) = module.terms
    outputs = module.model(batch["image"])
    assert term(outputs, batch, ctx).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():  # the student moves away
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    outputs = module.model(batch["image"])
    loss = term(outputs, batch, ctx)
    assert loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.any() for p in module.model.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())
    # on the unlabelled rows only: all-labelled batches give nothing to match
    labelled = {**batch, "labelled": torch.ones(4, dtype=torch.bool)}
    assert term(module.model(batch["image"]), labelled, ctx).item() == 0.0


def test_the_ramp_up_is_laine_and_ailas_sigmoid():
    assert sigmoid_rampup(0.0, 0.4) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0.2, 0.4) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(0.4, 0.4) == 1.0 and sigmoid_rampup(0.9, 0.4) == 1.0


def test_mean_teacher_trains_on_the_pool_resumes_and_predicts_with_the_chosen_network(
    kvasir_small, tmp_path, caplog
):
    sets = [*TINY_UNET, f"data.path={kvasir_small}", "data.label_budget=4"]
    sets += ["train.val_every=2", "data.num_workers=0"]
    cfg = load_config("unet-mean-teacher", [*sets, "train.max_steps=2"])
    data = prepare_data(cfg.data)
    batch = next(iter(loaders(cfg, data)[0]))
    assert batch["labelled"].sum() == 4 and (~batch["labelled"]).sum() == 4
    out = tmp_path / "run"
    train(cfg, out)
    result = train(load_config("unet-mean-teacher", [*sets, "train.max_steps=4"]), out, resume=True)
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert any(k.startswith("teacher.") for k in state), "the teacher is checkpointed"
    student = load_module(result.last_checkpoint)
    assert student.predictor is student.model
    cfg_t = load_config("unet-mean-teacher", [*sets, "model.predict_with=teacher"])
    teacher_run = MultiTaskModule(cfg_t.to_dict(), 3, data.class_names)
    teacher_run.load_state_dict(student.state_dict())
    assert teacher_run.predictor is teacher_run.teacher.module
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(teacher_run.eval().segment(x), student.eval().segment(x))
    # a semi-supervised recipe without a pool says so and trains labelled-only
    with caplog.at_level("WARNING"):
        train(
            load_config(
                "unet-mean-teacher", [*TINY_UNET, f"data.path={kvasir_small}", "train.max_steps=1"]
            ),
            tmp_path / "alone",
        )
    assert "learn(s) from the unlabelled pool only, and there is none" in caplog.text


def test_dtc_is_the_squared_gap_between_the_segmentation_and_the_distances_implied_one():
    from mtlseg.engine.module import build_model_and_tasks
    from mtlseg.terms import TermContext, build_terms

    cfg = load_config("unet-dtc", [*TINY_UNET])
    _, tasks = build_model_and_tasks(cfg, 1, 2)
    (dtc,) = build_terms(cfg.terms, tasks)
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[4.0, -4.0], [0.0, 2.0]])  # foreground probabilities
    distance = torch.tensor([[[[-0.2, 0.3], [0.0, -0.01]]]])  # negative inside
    out = {
        "segmentation": logits.clone().requires_grad_(),
        "distance": distance.clone().requires_grad_(),
    }
    p = logits.softmax(1)[0, 1]
    implied = torch.sigmoid(-1500.0 * distance[0, 0])
    expected = ((implied - p) ** 2).mean()
    done = TermContext(progress=1.0)  # past the ramp-up
    loss = dtc(out, {}, done)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert out["segmentation"].grad.abs().sum() > 0 and out["distance"].grad.abs().sum() > 0
    early = dtc(out, {}, TermContext(progress=0.0))
    assert early.item() == pytest.approx(math.exp(-5) * expected.item(), rel=1e-6)
