"""Paper 004: the weighting zoo end to end, dense geometric tasks, delta-M."""

from __future__ import annotations

import csv

import pytest
import torch

from mtlseg.config import load_config
from mtlseg.engine.checkpoint import load_checkpoint
from mtlseg.engine.inference import evaluate
from mtlseg.engine.train import train
from tests.conftest import TINY_UNET

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
        assert cos and all(-1 <= c <= 1 for c in cos)
    metrics = evaluate(full.best_checkpoint, str(kvasir_small), "val", with_hd95=False)
    assert 0 <= metrics["dice/mean"] <= 1


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
    m = evaluate(result.best_checkpoint, str(acdc_small), "train", with_hd95=False)
    # better than predicting "outside everywhere" (error 1 inside) and random directions (90)
    assert 0 <= m["task/distance/abs_err"] < 0.5
    assert m["task/normals/mean_angle"] < 80
    assert 0 <= m["task/normals/within_30"] <= 1
