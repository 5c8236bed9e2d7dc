"""Golden values for the metrics and their empty-mask conventions; weighting and losses."""

import math

import pytest
import torch

from mtlseg.losses import SEG_LOSSES
from mtlseg.metrics import SegmentationMetrics, confusion_counts, hd95
from mtlseg.weighting import build_weighting


def _pair():
    pred = torch.zeros(2, 8, 8, dtype=torch.long)
    target = torch.zeros_like(pred)
    pred[0, 2:4, 2:4] = 1  # 4 pixels
    target[0, 2:4, 2:5] = 1  # 6 pixels, 4 shared
    pred[1, 1, 1] = 2  # class 2 hallucinated in sample 1; class 1 empty in both
    return pred, target


def test_confusion_counts():
    tp, fp, fn = confusion_counts(*_pair(), 3)
    assert (
        tp[0].tolist() == [58, 4, 0] and fp[0].tolist() == [2, 0, 0] and fn[0].tolist() == [0, 2, 0]
    )
    assert fp[1, 2] == 1 and tp[1, 1] == 0 and fn[1, 1] == 0


def test_dice_iou_golden_values_and_conventions():
    m = SegmentationMetrics(["background", "a", "b"])
    m.update(*_pair(), torch.tensor([0, 1]))
    r = m.compute()
    assert r["dice/a"] == pytest.approx((0.8 + 1.0) / 2)  # 2*4/(8+2) and empty-empty = 1
    assert r["iou/a"] == pytest.approx((4 / 6 + 1.0) / 2)
    assert r["dice/b"] == pytest.approx((1.0 + 0.0) / 2)  # empty-empty = 1, hallucinated = 0
    assert r["dice/mean"] == pytest.approx((0.9 + 0.5) / 2)  # background excluded
    assert r["pixel_accuracy"] == pytest.approx(125 / 128)  # 2 + 1 wrong pixels
    assert "volume_dice/mean" not in r  # one slice per case: no volume metric


def test_volume_dice_sums_over_slices():
    m = SegmentationMetrics(["background", "a", "b"])
    m.update(*_pair(), torch.tensor([0, 0]))
    r = m.compute()
    assert r["volume_dice/a"] == pytest.approx(8 / 10)  # pooled: tp 4, fp 0, fn 2
    assert r["volume_dice/b"] == 0.0  # tp 0, fp 1


def test_hd95_conventions():
    pred, target = _pair()
    d = hd95(pred, target, 3)
    assert d[0, 1] == pytest.approx(1.0)  # one column off
    assert d[1, 1] == 0.0  # empty-empty
    assert d[1, 2] == pytest.approx(math.hypot(8, 8))  # present in one only: image diagonal
    perfect = hd95(target, target, 3)
    assert (perfect == 0).all()


@pytest.mark.parametrize("name", SEG_LOSSES.names())
def test_segmentation_losses_prefer_the_right_answer(name):
    loss = SEG_LOSSES.get(name)()
    target = torch.randint(0, 3, (2, 8, 8))
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    assert loss(good, target) < loss(-good, target)


def test_fixed_weighting_is_the_weighted_sum():
    w = build_weighting("fixed", {}, {"segmentation": 1.0, "hog": 0.25})
    losses = {"segmentation": torch.tensor(2.0), "hog": torch.tensor(4.0)}
    assert w(losses).item() == pytest.approx(3.0)
