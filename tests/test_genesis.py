"""Models Genesis pretraining (issue 37): the corruptions, the restoration task, and a stage
that trains it alone before the segmentation fine-tunes."""

from __future__ import annotations

import logging

import pytest
import torch

from mtlseg.config import StageConfig
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.stages import StagePlan
from mtlseg.settings import load_config
from mtlseg.targets.genesis import bezier_map, corrupt, inpaint, local_shuffle, outpaint, to_unit
from tests.conftest import TINY_UNET


def _image(seed: int = 0, side: int = 63) -> torch.Tensor:
    return torch.rand(1, side, side, generator=torch.Generator().manual_seed(seed))


def test_the_intensity_curve_is_monotonic_and_keeps_its_ends():
    x = torch.linspace(0, 1, 101).view(1, 1, 101)
    for seed in range(8):
        y = bezier_map(x, torch.Generator().manual_seed(seed)).flatten()
        steps = y.diff()
        rising = bool((steps >= -1e-6).all())
        assert rising or bool((steps <= 1e-6).all()), seed  # increasing, or the reversed curve
        ends = (0.0, 1.0) if rising else (1.0, 0.0)
        assert y[0].item() == pytest.approx(ends[0], abs=1e-3)
        assert y[-1].item() == pytest.approx(ends[1], abs=1e-3)


def test_local_shuffling_only_permutes_pixels_within_small_windows():
    x = _image()
    y = local_shuffle(x, torch.Generator().manual_seed(0), blocks=20)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert not torch.equal(x, y)


def test_in_painting_fills_boxes_and_out_painting_keeps_them():
    x = torch.full((1, 70, 70), 2.0)  # a value noise in [0, 1) never takes
    g = torch.Generator().manual_seed(0)
    inside = inpaint(x, g) != 2.0
    assert (70 // 6) ** 2 <= int(inside.sum()) <= 5 * (70 // 3) ** 2
    kept = outpaint(x, g) == 2.0
    assert (70 - 4 * 70 // 7) ** 2 <= int(kept.sum()) <= 5 * (70 - 3 * 70 // 7) ** 2


def test_the_task_restores_the_image_in_its_own_range_reproducibly():
    cfg = load_config("unet-genesis", [*TINY_UNET])
    module = MultiTaskModule(cfg.to_dict(), 1, ["background", "foreground"])
    task = next(t for t in module.tasks if t.kind == "genesis")
    x = torch.randn(4, 1, 32, 32) * 3 + 5
    a = task.training_input(x, torch.Generator().manual_seed(1))
    b = task.training_input(x, torch.Generator().manual_seed(1))
    c = task.training_input(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    low, high = x.amin((1, 2, 3)), x.amax((1, 2, 3))
    assert bool(
        (a.amin((1, 2, 3)) >= low - 1e-4).all() and (a.amax((1, 2, 3)) <= high + 1e-4).all()
    )
    assert torch.equal(task.target({"image": x}), x)
    unit, lo, spread = to_unit(x)
    assert torch.allclose(unit * spread + lo, x, atol=1e-5)
    # every corruption off: the input is the image itself
    plain = corrupt(unit, torch.Generator(), nonlinear=0, shuffle=0, paint=0)
    assert torch.equal(plain, unit)


def test_a_stage_can_train_without_the_primary_task():
    """``primary: false``: pretraining trains the restoration alone; the next stage the
    segmentation alone (its task list empty)."""
    stages = [
        StageConfig(fraction=0.3, tasks=["genesis"], primary=False),
        StageConfig(tasks=[]),
    ]
    plan = StagePlan(stages, "segmentation", 1.0, progress=lambda step: step / 10)
    names = ["segmentation", "genesis"]
    assert plan.active(0, names, "tasks") == ["genesis"]
    assert plan.active(5, names, "tasks") == ["segmentation"]
    # without the flag the primary task trains in every stage, as before
    default = StagePlan(
        [StageConfig(fraction=0.3, tasks=["genesis"]), StageConfig()],
        "segmentation",
        1.0,
        progress=lambda s: s / 10,
    )
    assert default.active(0, names, "tasks") == names


def test_the_recipe_pretrains_then_fine_tunes():
    cfg = load_config("unet-genesis", [*TINY_UNET])
    module = MultiTaskModule(cfg.to_dict(), 1, ["background", "foreground"])
    batch = {"image": torch.randn(4, 1, 32, 32), "mask": torch.zeros(4, 32, 32, dtype=torch.long)}
    assert list(module.train_step.losses(batch, 0).losses) == ["genesis"]
    # outside a trainer a fraction stage counts steps: step 1 is past 0.3, the fine-tuning
    assert list(module.train_step.losses(batch, 1).losses) == ["segmentation"]


@pytest.mark.parametrize(
    ("recipe", "fine_tuning"),
    [
        ("unet-genesis-dtc", {"segmentation", "distance", "dtc"}),
        ("unet-genesis-mean-teacher", {"segmentation", "mean-teacher"}),
    ],
)
def test_pretraining_composes_with_a_semi_supervised_term(recipe, fine_tuning):
    cfg = load_config(recipe, [*TINY_UNET, "model.params.dropout=null"])
    module = MultiTaskModule(cfg.to_dict(), 1, ["background", "foreground"])
    mask = torch.zeros(4, 32, 32, dtype=torch.long)
    mask[:, 8:20, 8:20] = 1
    batch = {
        "image": torch.randn(4, 1, 32, 32),
        "mask": mask,
        "labelled": torch.tensor([True, True, False, False]),
        "intensity_range": torch.ones(4),
    }
    assert set(module.train_step.losses(batch, 0).losses) == {"genesis"}
    if module.teacher is not None:  # the teacher drifts from the student while it pretrains
        with torch.no_grad():
            next(module.model.parameters()).add_(1.0)
    assert set(module.train_step.losses(batch, 1).losses) == fine_tuning
    if module.teacher is not None:  # and starts the fine-tuning as the pretrained student
        student = dict(module.model.named_parameters())  # (buffers: both forwards moved them)
        teacher = dict(module.teacher.network.named_parameters())
        assert all(torch.equal(student[k], teacher[k]) for k in student)


def test_pretraining_without_a_pool_warns_that_it_learns_from_labelled_images(kvasir_small, caplog):
    from mtlseg.engine.data import prepare_data
    from mtlseg.engine.requirements import check_requirements

    cfg = load_config("unet-genesis", [*TINY_UNET, f"data.path={kvasir_small}"])
    with caplog.at_level(logging.WARNING):
        check_requirements(cfg, prepare_data(cfg.data))
    assert "would learn from the unlabelled pool too, and there is none" in caplog.text
