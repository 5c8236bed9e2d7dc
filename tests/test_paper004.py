"""Paper 004: the weighting zoo end to end, dense geometric tasks, delta-M."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from mtlseg.engine.checkpoint import load_checkpoint
from mtlseg.engine.inference import evaluate
from mtlseg.engine.train import train
from mtlseg.settings import load_config
from tests.conftest import TINY_UNET, validation_of

RESUME = [
    "train.val_every=2",
    "train.log_every=1",
    "data.val_fraction=0.25",
    "train.scheduler=step",
    "train.warmup=0",
]


def _cfg(data, kind, steps, *extra):
    return load_config(
        "unet-hog",
        [
            *TINY_UNET,
            f"data.path={data}",
            f"weighting.kind={kind}",
            f"train.max_steps={steps}",
            *RESUME,
            *extra,
        ],
    )


def _assert_same(a, b, key: str) -> None:
    """Tensors, numbers and nested dicts/lists (a weighting's extra state) equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), key
        for k in a:
            _assert_same(a[k], b[k], f"{key}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), key
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{key}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), key
    else:
        assert a == pytest.approx(b), key


@pytest.mark.parametrize("kind", ["uw", "famo", "gradnorm", "nash-mtl", "upgrad"])
def test_each_family_trains_resumes_exactly_and_evaluates(kind, kvasir_small, tmp_path):
    full = train(_cfg(kvasir_small, kind, 4), tmp_path / "full")
    train(_cfg(kvasir_small, kind, 2), tmp_path / "split")
    half = train(_cfg(kvasir_small, kind, 4), tmp_path / "split", resume=True)
    a = load_checkpoint(full.last_checkpoint)["state_dict"]
    b = load_checkpoint(half.last_checkpoint)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:  # the weighting's state (log-variances, logits, Nash alpha) included
        _assert_same(a[key], b[key], key)
    if kind != "upgrad":  # UPGrad is stateless
        assert any(k.startswith("weighting.") for k in a), "the weighting state is checkpointed"
    with open(full.out_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    weights = [float(r["train/weight_hog"]) for r in rows if r.get("train/weight_hog")]
    assert len(weights) >= 1 and all(w > 0 for w in weights)
    if kind in ("nash-mtl", "upgrad"):
        cos = [
            float(r["train/cos_segmentation-hog"])
            for r in rows
            if r.get("train/cos_segmentation-hog")
        ]
        assert len(cos) == len(weights), "the cosine is logged with every step's weights"
    metrics = evaluate(full.best_checkpoint, str(kvasir_small), "val")
    logged = validation_of(full.best_checkpoint)  # a re-evaluation reproduces validation
    assert metrics["dice/mean"] == pytest.approx(logged["val/dice"], abs=1e-6)


# ---------------------------------------------------------------- geometric tasks
def test_signed_distance_and_normals_of_a_square():
    from mtlseg.targets.geometry import boundary_normals, signed_distance

    mask = torch.zeros(1, 9, 9, dtype=torch.long)
    mask[0, 2:7, 2:7] = 1
    sdf = signed_distance(mask, 3)
    assert sdf.shape == (1, 2, 9, 9)
    assert sdf[0, 0, 4].tolist() == [1.5, 0.5, -0.5, -1.5, -2.5, -1.5, -0.5, 0.5, 1.5]
    assert torch.isinf(sdf[0, 1]).all() and (sdf[0, 1] > 0).all(), "class 2 is absent"
    normals, valid = boundary_normals(sdf, band=1.0)
    assert normals[0, 0, :, 4, 1].tolist() == [0.0, -1.0], "left edge: normal points left"
    assert normals[0, 0, :, 7, 4].tolist() == [1.0, 0.0], "bottom edge: normal points down"
    assert not valid[0, 1].any() and not valid[0, 0, 4, 4], "no normal far from a boundary"


def test_truncated_distance_and_normals_of_a_tilted_plane():
    from mtlseg.targets.geometry import boundary_normals, truncated

    assert truncated(torch.tensor([-5.0, -1.0, 0.5, 3.0]), 2.0).tolist() == [-1, -0.5, 0.25, 1]
    # the plane s = (3y + 4x) / 5 - 2 has the unit gradient (0.6, 0.8) in (y, x)
    y, x = torch.meshgrid(torch.arange(6), torch.arange(7), indexing="ij")
    sdf = ((3 * y + 4 * x) / 5 - 2).float()[None, None]
    normals, valid = boundary_normals(sdf, band=1.0)
    inner = normals[0, 0, :, 1:-1, 1:-1]
    assert torch.allclose(inner[0], torch.full_like(inner[0], 0.6), atol=1e-6)
    assert torch.allclose(inner[1], torch.full_like(inner[1], 0.8), atol=1e-6)
    # the first row has only the one-sided half difference in y (replicated border): 0.3
    top = torch.tensor([0.3, 0.8]) / math.hypot(0.3, 0.8)
    assert torch.allclose(normals[0, 0, :, 0, 3], top, atol=1e-6)
    # valid: within 1 pixel of the boundary, |3y + 4x - 10| <= 5, its edge included
    assert torch.equal(valid[0, 0], (3 * y + 4 * x - 10).abs() <= 5)
    assert valid[0, 0, 5, 0] and valid[0, 0, 1, 3], "s = 1 exactly is in the band"


def test_normal_metrics_match_known_angles():
    from mtlseg.metrics.geometry import NormalMetrics

    target = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1).expand(1, 1, 2, 1, 4)
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 40.0]))
    pred = torch.stack([angles.cos(), angles.sin()]).view(1, 1, 2, 1, 4)
    m = NormalMetrics()
    m.update(pred, (target, torch.ones(1, 1, 1, 4, dtype=torch.bool)))
    out = m.compute()
    assert float(out["mean_angle"]) == pytest.approx(17.5, abs=1e-3)
    assert float(out["median_angle"]) == pytest.approx(10.0, abs=1e-3)  # lower median
    assert [float(out[f"within_{t}"]) for t in ("11.25", "22.5", "30")] == [0.5, 0.75, 0.75]


def test_normal_metrics_of_equal_and_opposite_normals_are_0_and_180_degrees():
    from mtlseg.metrics.geometry import NormalMetrics

    # a unit vector whose float32 dot product with itself is 1 + 2.4e-7: acos needs the clamp
    t = torch.nn.functional.normalize(torch.tensor([0.9754138, -0.1797607, 0.1274917]), dim=0)
    assert float((t * t).sum()) > 1.0
    target = t.view(1, 1, 3, 1, 1).expand(1, 1, 3, 1, 2)
    pred = torch.stack([t, -t], dim=1).view(1, 1, 3, 1, 2)
    m = NormalMetrics()
    m.update(pred, (target, torch.ones(1, 1, 1, 2, dtype=torch.bool)))
    out = m.compute()
    assert float(out["mean_angle"]) == pytest.approx(90.0)  # (0 + 180) / 2, neither NaN
    assert [float(out[f"within_{t}"]) for t in ("11.25", "22.5", "30")] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("angles", [[], [25.0]])
def test_normal_metrics_without_valid_pixels_are_nan_and_one_pixel_is_its_angle(angles):
    from mtlseg.metrics.geometry import NormalMetrics

    m = NormalMetrics()
    if angles:
        a = torch.deg2rad(torch.tensor(angles))
        pred = torch.stack([a.cos(), a.sin()]).view(1, 1, 2, 1, 1)
        target = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
        m.update(pred, (target, torch.ones(1, 1, 1, 1, dtype=torch.bool)))
        out = m.compute()
        assert float(out["mean_angle"]) == pytest.approx(25.0, abs=1e-4)
        assert float(out["median_angle"]) == pytest.approx(25.0, abs=1e-4)
        assert [float(out[f"within_{t}"]) for t in ("11.25", "22.5", "30")] == [0, 0, 1]
    else:
        out = m.compute()
        assert set(out) == {"mean_angle", "median_angle"}
        assert all(torch.isnan(v) for v in out.values())


def test_depth_metrics_abs_and_rel_error():
    from mtlseg.metrics.geometry import DepthMetrics

    m = DepthMetrics(min_target=0.1)
    t = torch.tensor([[1.0, 0.5, 0.0]])
    m.update(torch.tensor([[1.5, 0.5, 0.2]]), (t, torch.ones_like(t, dtype=torch.bool)))
    out = m.compute()
    assert float(out["abs_err"]) == pytest.approx(0.7 / 3)
    assert float(out["rel_err"]) == pytest.approx(0.25)  # (0.5/1 + 0/0.5) / 2; t=0 skipped


def test_geometry_recipe_learns_distance_and_normals_on_real_slices(acdc_small, tmp_path):
    cfg = load_config(
        "unet-geometry",
        [
            *TINY_UNET,
            f"data.path={acdc_small}",
            "train.max_steps=40",
            "train.val_every=40",
            "train.lr=3e-3",
        ],
    )
    result = train(cfg, tmp_path / "run")
    m = evaluate(result.best_checkpoint, str(acdc_small), "train")
    # better than predicting "outside everywhere" (error 1 inside) and random directions (90)
    assert m["task/distance/abs_err"] < 0.5
    assert m["task/normals/mean_angle"] < 80


# ---------------------------------------------------------------- delta-M and compare
def test_delta_m_is_the_mean_relative_change_signed_lower_is_better():
    from mtlseg.report.delta_m import delta_m

    base = {"dice/mean": 0.8, "task/distance/abs_err": 0.2, "task/distance/loss": 1.0}
    run = {"dice/mean": 0.88, "task/distance/abs_err": 0.25, "task/distance/loss": 9.0}
    value, used = delta_m(run, base)
    # Dice +10 % counts -10; abs error +25 % counts +25; losses are left out
    assert used == ["dice/mean", "task/distance/abs_err"]
    assert value == pytest.approx((-10 + 25) / 2)
    assert delta_m(base, base)[0] == pytest.approx(0.0)


def test_compare_expands_weightings_and_single_task_baselines(acdc_small):
    from mtlseg.report.compare import expand

    variants = expand(
        ["unet", "unet-geometry"], TINY_UNET, str(acdc_small), ["equal", "uw"], single_task=True
    )
    names = [v.name for v in variants]
    assert names == [
        "unet",
        "unet-geometry+equal",
        "unet-geometry+uw",
        "unet-geometry-only-distance",
        "unet-geometry-only-normals",
    ]
    only = variants[3]
    cfg = load_config(only.recipe, [*TINY_UNET, *only.overrides])
    assert [t.name for t in cfg.tasks] == ["segmentation", "distance"]
    assert cfg.tasks[0].weight == 0 and cfg.weighting.kind == "fixed"


def test_compare_reports_delta_m_and_weights(acdc_small, tmp_path):
    from mtlseg.report.compare import compare

    result = compare(
        ["unet", "unet-geometry"],
        str(acdc_small),
        1,
        tmp_path / "cmp",
        [*TINY_UNET, "train.max_steps=2", "train.val_every=2", "train.log_every=1"],
        grid_samples=2,
        weightings=["uw"],
        single_task=True,
    )
    table = result.table
    assert "delta-M % (lower is better)" in table
    section = table.split("delta-M vs the single-task runs")[1]
    row = next(line for line in section.splitlines() if line.startswith("| unet-geometry+uw |"))
    assert "task/distance/abs_err" in row and "task/normals/mean_angle" in row
    assert "dice/mean" in row
    value = float(row.split("|")[2])
    assert math.isfinite(value)
    assert result.weights is not None and result.weights.is_file()


# ---------------------------------------------------------------- resnet-unet
def test_resnet_unet_has_pyramid_pooling_and_loads_a_whole_resnet(tmp_path):
    from mtlseg.models import build_backbone
    from mtlseg.models.context import PyramidPooling
    from tests.test_slices import _save_resnet_weights

    state = _save_resnet_weights(tmp_path / "r50.pth", width=4)
    params = {"layers": [1, 1, 1, 1], "width": 4, "weights": str(tmp_path / "r50.pth")}
    net = build_backbone("resnet-unet", params, in_channels=1, num_classes=3)
    assert net.weights_report["missing"] == [] and net.weights_report["unexpected"] == [
        "fc.bias",
        "fc.weight",
    ], "all four stages load, only the classifier is left over"
    assert torch.equal(net.encoder.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    assert isinstance(net.pyramid, PyramidPooling) and net.pyramid.bins == (1, 2, 3, 6)
    assert net.feature_info["bottleneck"].stride == 32
    assert net.feature_info["bottleneck"].channels == 4 * 32  # 2048 at ResNet-50's width 64
    logits, features = net(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 3, 64, 64) and features["bottleneck"].shape[-1] == 2
    # the pyramid sees the whole bottleneck: changing one corner changes the other
    x = torch.zeros(1, 128, 6, 6)
    net.pyramid.eval()
    y = x.clone()
    y[..., 0, 0] = 5.0
    assert not torch.allclose(net.pyramid(x)[..., 5, 5], net.pyramid(y)[..., 5, 5])


def test_gradient_clipping_applies_after_the_aggregator(kvasir_small, tmp_path):
    """One SGD step of PCGrad from the same initial weights: with the norm clipped to ~0 the
    weights stay where they started (two tiny clips agree), unclipped they move."""

    def after_one_step(clip: str) -> dict[str, torch.Tensor]:
        extra = ["train.optimizer=sgd", "train.lr=0.1", "train.momentum=0", "train.warmup=0"]
        cfg = _cfg(kvasir_small, "pcgrad", 1, *extra, f"train.grad_clip={clip}")
        result = train(cfg, tmp_path / clip)
        state = load_checkpoint(result.last_checkpoint)["state_dict"]
        return {k: v for k, v in state.items() if k.endswith("conv.weight")}

    tiny, tinier, free = after_one_step("1e-9"), after_one_step("1e-12"), after_one_step("null")
    for key in tiny:
        assert torch.allclose(tiny[key], tinier[key], atol=1e-7), key
    assert max(float((free[k] - tiny[k]).abs().max()) for k in tiny) > 1e-4


@pytest.mark.parametrize("kind", ["gradnorm", "imtl-g"])
def test_gradient_methods_train_mtan_whose_tasks_share_only_the_encoder(
    kind, acdc_labelled, tmp_path
):
    """MTAN has no shared bottleneck: GradNorm compares gradients at its last shared encoder
    block, aggregators take the Jacobian over the shared network (attention included)."""
    from tests.conftest import TINY_SEGNET

    cfg = load_config(
        "mtan-3task",
        [
            *TINY_SEGNET,
            f"data.path={acdc_labelled}",
            f"weighting.kind={kind}",
            "train.max_steps=2",
            "train.val_every=2",
            "train.log_every=1",
        ],
    )
    result = train(cfg, tmp_path / "run")
    with open(result.out_dir / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/weight_bbox")]
    assert rows and all(float(r["train/weight_classification"]) > 0 for r in rows)
    state = load_checkpoint(result.last_checkpoint)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
