"""Recipes, --set overrides and name lookups: typed, validated, errors name the key."""

import dataclasses

import pytest

from mtlseg.config import recipe_names
from mtlseg.errors import ConfigError
from mtlseg.models import BACKBONES, build_backbone
from mtlseg.settings import load_config
from mtlseg.tasks import TASKS
from mtlseg.terms import TERMS
from mtlseg.weighting import WEIGHTINGS, build_weighting


def test_shipped_recipes_load_and_are_the_decided_set():
    paper000 = {"unet", "unet-hog", "u2net", "u2net-hog"}
    issue21 = {"unet-position", "unet-mean-teacher", "unet-dtc", "unet-bcp", "unet-genesis"}
    issue21 |= {"unet-genesis-dtc", "unet-genesis-mean-teacher"}
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
    assert cfg.tasks[0].params.loss == "dice-ce"  # typed at load: the task's own Config
    assert cfg.model.params.channels == [4, 8]


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


@pytest.mark.parametrize(
    ("look_up", "registry", "kind"),
    [
        (lambda: TASKS.get("nosuch"), TASKS, "task"),
        (lambda: build_backbone("nosuch", {}, 1, 2), BACKBONES, "backbone"),
        (lambda: build_weighting("nosuch", {}, {}, "segmentation"), WEIGHTINGS, "weighting"),
        (lambda: TERMS.get("nosuch"), TERMS, "term"),
    ],
)
def test_an_unknown_name_lists_every_registered_one(look_up, registry, kind):
    names = registry.names()
    assert names == sorted(names) and len(names) >= 4
    with pytest.raises(ConfigError, match=f"unknown {kind} 'nosuch'; valid {kind}s: ") as err:
        look_up()
    assert str(err.value).endswith(", ".join(names))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tasks.hog.params.cells=4", r"tasks.hog.params.cells: unknown key; valid keys: .*cell,"),
        ("model.params.widht=3", r"model.params.widht: unknown key; valid keys: .*channels"),
        ("weighting.params.alpa=1", r"weighting.params.alpa: unknown key; valid keys: "),
        ("tasks.hog.params.cell=x", r"tasks.hog.params.cell: expected an integer, got 'x'"),
    ],
)
def test_a_typo_under_params_fails_at_load_naming_the_key_and_the_valid_ones(override, message):
    """Before any data is read: the params are each component's Config from the start."""
    with pytest.raises(ConfigError, match=message):
        load_config("unet-hog", [override])


def test_params_are_typed_at_load_and_written_back_whole():
    from mtlseg.tasks.hog import HOGParams

    cfg = load_config("unet-hog", ["tasks.hog.params.cell=8"])
    assert isinstance(cfg.tasks[1].params, HOGParams) and cfg.tasks[1].params.cell == 8
    saved = cfg.to_dict()["tasks"][1]["params"]
    assert saved["cell"] == 8 and set(saved) == {f.name for f in dataclasses.fields(HOGParams)}


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
