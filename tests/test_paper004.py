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
