"""Recipes, --set overrides and name lookups: typed, validated, errors name the key."""

import pytest

from mtlseg.config import load_config, recipe_names
from mtlseg.errors import ConfigError
from mtlseg.models import build_backbone
from mtlseg.tasks import TASKS
from mtlseg.weighting import build_weighting


def test_shipped_recipes_load_and_are_the_decided_set():
    paper000 = {"unet", "unet-hog", "u2net", "u2net-hog"}
    issue21 = {"unet-position", "unet-mean-teacher", "unet-dtc", "unet-bcp", "unet-genesis"}
    paper001 = {"small-unet", "small-unet-position", "small-unet-contrastive"}
    paper001 |= {"small-unet-film", "big-unet"}
    paper002 = {"segnet", "segnet-3task", "mtan-3task", "mtan-no-bbox", "mtan-no-class"}
    paper002 |= {"mtan-canny", "mtan-denoise", "mtan-colour"}
    paper003 = {"aspp", "aspp-no-ce", "aspp-class", "aspp-class-sync", "aspp-decomp"}
    paper003 |= {"unet3d", "unet3d-decomp"}
    paper004 = {"unet-geometry", "nyuv2-geometry"}
    assert paper000 | paper001 | paper002 | paper003 | paper004 | issue21 == set(recipe_names())
    for name in recipe_names():
        cfg = load_config(name)
        kinds = {t.name: t.kind for t in cfg.tasks}
        assert kinds[cfg.primary] == "segmentation" and cfg.name == name


def test_the_two_quick_run_keys_apply_to_every_recipe():
    for name in recipe_names():
        cfg = load_config(name, ["train.max_steps=3", "data.image_size=32"])
        assert cfg.train.max_steps == 3 and cfg.data.image_size == 32


def test_set_reaches_tasks_by_name_and_index():
    cfg = load_config(
        "unet-hog",
        ["tasks.hog.weight=0.5", "tasks.0.params.loss=dice-ce", "model.params.channels=[4,8]"],
    )
    assert cfg.tasks[1].weight == 0.5
    assert cfg.tasks[0].params["loss"] == "dice-ce"
    assert cfg.model.params["channels"] == [4, 8]


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.max_steps=abc", "train.max_steps: expected an integer"),
        ("train.lr=fast", "train.lr: expected a number"),
        ("train.max_stepz=3", "train.max_stepz: unknown key"),
        ("train.max_steps", "expected KEY=VALUE"),
        ("tasks.depth.weight=1", "no list item named 'depth'"),
        ("data.augment=maybe", "data.augment: unknown augmentation 'maybe'; valid: flips"),
    ],
)
def test_bad_set_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("unet", [override])


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="unknown recipe 'unet-hogg'.*unet-hog"):
        load_config("unet-hogg")


def test_unknown_task_backbone_weighting_list_valid_names():
    with pytest.raises(
        ConfigError,
        match="unknown task .nosuch.; valid tasks: bbox, canny, classification, colourise, "
        "contrastive, denoise, depth, distance, genesis, hog, normals, position, presence, scene, "
        "segmentation$",
    ):
        TASKS.get("nosuch")
    with pytest.raises(
        ConfigError,
        match="unknown backbone .resnet.; valid backbones: big-unet, mtan, resnet-unet, segnet, "
        "small-unet, u2net, unet, unet-aspp, unet3d, vgg-aspp$",
    ):
        build_backbone("resnet", {}, 1, 2)
    with pytest.raises(
        ConfigError,
        match="unknown weighting .nash.; valid weightings: aligned-mtl, cagrad, constant, decay, "
        "dwa, equal, famo, fixed, gcs, gradnorm, imtl-g, mgda, nash-mtl, pcgrad, rlw, softadapt, upgrad, "
        "uw$",
    ):
        build_weighting("nash", {}, {}, "segmentation")


def test_task_params_are_validated_against_the_task():
    from mtlseg.engine.module import build_model_and_tasks

    cfg = load_config("unet-hog", ["tasks.hog.params.cells=4"])
    with pytest.raises(ConfigError, match="tasks.hog.params.cells: unknown key"):
        build_model_and_tasks(cfg, 3, 2)


def test_the_primary_task_is_declared_or_the_first_segmentation_task():
    with pytest.raises(
        ConfigError, match="needs a segmentation task .its primary task.; it has hog"
    ):
        load_config({"tasks": [{"kind": "hog"}]})
    tasks = [{"kind": "hog"}, {"kind": "segmentation", "name": "a"}, {"kind": "segmentation"}]
    assert load_config({"tasks": tasks}).primary == "a"
    assert load_config({"tasks": tasks, "primary": "segmentation"}).primary == "segmentation"
    with pytest.raises(ConfigError, match="primary: task 'hog' is a hog task"):
        load_config({"tasks": tasks, "primary": "hog"})
    with pytest.raises(ConfigError, match="primary: no task named 'b'; tasks: hog, a, segm"):
        load_config({"tasks": tasks, "primary": "b"})


def test_documented_ablation_recipes_load():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "docs" / "ablations").glob("*.yaml"))
    assert files
    for path in files:
        cfg = load_config(str(path))
        assert cfg.train.sampler in ("shuffle", "pairs", "patient-pairs")
