"""engine/module.py: the declared primary task, wherever the recipe lists it."""

from __future__ import annotations

import torch

from mtlseg.config import load_recipe_dict
from mtlseg.engine.module import MultiTaskModule
from mtlseg.settings import load_config
from tests.conftest import TINY_UNET


def _module(raw: dict, *extra: str) -> MultiTaskModule:
    cfg = load_config(raw, [*TINY_UNET, *extra])
    return MultiTaskModule(cfg.to_dict(), 1, ["bg", "a", "b"])


def test_the_primary_task_need_not_come_first():
    raw = load_recipe_dict("unet-hog")
    raw["tasks"] = list(reversed(raw["tasks"]))  # hog, then segmentation
    module = _module(raw)
    assert module.cfg.primary == "segmentation" and module.seg_task.name == "segmentation"
    assert [t.name for t in module.aux_tasks] == ["hog"]
    x = torch.randn(2, 1, 32, 32)
    assert module.segment(x).shape == (2, 3, 32, 32)  # the segmentation head's logits
    batch = {"image": x, "mask": torch.randint(0, 3, (2, 32, 32))}
    losses = module.train_step.losses(batch, 0).losses
    assert set(losses) == {"hog", "segmentation"}


def test_semi_supervised_terms_read_the_declared_primary_by_default():
    raw = load_recipe_dict("unet-mean-teacher")
    raw["tasks"][0]["name"] = "heart"
    module = _module(raw, "model.params.dropout=null")
    (term,) = module.terms
    assert module.cfg.primary == "heart" and term.seg is module.seg_task


def test_a_backbone_with_a_branch_per_task_decodes_the_primary_wherever_it_is_listed():
    raw = load_recipe_dict("mtan-3task")
    raw["tasks"] = [raw["tasks"][2], raw["tasks"][0], raw["tasks"][1]]  # bbox first
    raw["model"]["params"] = {"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1]}
    cfg = load_config(raw, ["data.image_size=32"])
    from mtlseg.engine.module import build_model_and_tasks

    model, _ = build_model_and_tasks(cfg, 1, 3, {"pathology": ["a", "b"]})
    assert cfg.primary == "segmentation" and model.backbone.task_names[0] == "segmentation"
