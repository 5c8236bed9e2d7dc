"""Golden values for the metrics and their empty-mask conventions; weighting and losses."""

import math

import pytest
import torch

from mtlseg.errors import ConfigError
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
    factory = SEG_LOSSES.get(name)
    loss = factory()
    target = torch.randint(0, 3, (2, 8, 8))
    good = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 10
    if factory.mode == "multilabel":  # one channel per foreground class
        good, target = good[:, 1:], good[:, 1:] > 0
    assert loss(good, target) < loss(-good, target)


def test_bce_dice_is_paper_001_equation_1_and_allows_overlap():
    loss = SEG_LOSSES.get("bce-dice")()
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 3.0]]]])  # (1, 2 classes, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]], [[1.0, 1.0]]]])  # both classes on: overlap
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
    dice = 1 - (2 * (p * target).sum((2, 3)) / (p.sum((2, 3)) + target.sum((2, 3)))).mean()
    assert loss(logits, target).item() == pytest.approx((0.6 * bce + 0.4 * dice).item(), abs=1e-4)


def test_constant_and_decaying_auxiliary_weights():
    tasks = {"seg": 1.0, "position": 1.0}
    losses = {"seg": torch.tensor(2.0), "position": torch.tensor(10.0)}
    constant = build_weighting("constant", {"c": 0.1}, tasks, "seg")
    assert constant(losses, step=500, epoch=7).item() == pytest.approx(2.0 + 0.1 * 10)
    by_epoch = build_weighting("decay", {"c": 0.3}, tasks, "seg")
    # eq. 3: c / t with t = epoch + 1, whatever the step
    expected = [0.3, 0.15, 0.1, 0.075]
    got = [by_epoch.weights(losses, step=999, epoch=e)["position"] for e in range(4)]
    assert got == pytest.approx(expected)
    assert by_epoch.weights(losses, 0, 3)["seg"] == 1.0
    by_step = build_weighting("decay", {"c": 0.3, "unit": "step"}, tasks, "seg")
    assert by_step.weights(losses, step=9, epoch=0)["position"] == pytest.approx(0.03)
    with pytest.raises(ConfigError, match="weighting.params: unit must be epoch or step"):
        build_weighting("decay", {"unit": "batch"}, tasks, "seg")


def test_fixed_weighting_is_the_weighted_sum():
    w = build_weighting("fixed", {}, {"segmentation": 1.0, "hog": 0.25}, "segmentation")
    losses = {"segmentation": torch.tensor(2.0), "hog": torch.tensor(4.0)}
    assert w(losses).item() == pytest.approx(3.0)
