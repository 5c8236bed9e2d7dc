"""Golden values for the metrics and their empty-mask conventions; weighting and losses."""

import math

import numpy as np
import pytest
import torch

from mtlseg.errors import ConfigError
from mtlseg.losses import SEG_LOSSES
from mtlseg.metrics import SegmentationMetrics, confusion_counts, hd95, score_case, summarise
from mtlseg.metrics.cases import format_summary, write_scores
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


def test_dice_iou_golden_values_under_each_empty_convention():
    """Two images (two cases): class a is empty in both prediction and truth of case 1, class
    b is hallucinated in case 1 and empty in both in case 0."""
    expected = {  # (dice/a, dice/b, dice/mean)
        "exclude": (0.8, 0.0, (0.8 + 0.0) / 2),  # nnU-Net: empty-empty left out of the mean
        "one": ((0.8 + 1) / 2, (1 + 0) / 2, (0.9 + 0.5) / 2),
        "zero": ((0.8 + 0) / 2, 0.0, (0.4 + 0.0) / 2),
    }
    for empty, (a, b, mean) in expected.items():
        m = SegmentationMetrics(["background", "a", "b"], empty=empty)
        m.update(*_pair(), torch.tensor([0, 1]))
        r = m.compute()
        assert r["dice/a"] == pytest.approx(a), empty
        assert r["dice/b"] == pytest.approx(b), empty
        assert r["dice/mean"] == pytest.approx(mean), empty
    m = SegmentationMetrics(["background", "a", "b"])
    m.update(*_pair(), torch.tensor([0, 1]))
    r = m.compute()
    assert r["iou/a"] == pytest.approx(4 / 6)
    assert r["pixel_accuracy"] == pytest.approx(125 / 128)  # 2 + 1 wrong pixels
    assert "slice_dice/mean" not in r  # one image per case: no slice-wise column


def test_a_false_positive_on_an_empty_truth_scores_zero_not_nan():
    """MONAI's DiceMetric(ignore_empty=True) would return NaN here and drop the error."""
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    pred[0, 0, 0] = 1
    m = SegmentationMetrics(["background", "a"])
    m.update(pred, torch.zeros_like(pred), torch.tensor([0]))
    assert m.compute()["dice/a"] == 0.0
    assert score_case(pred[0], torch.zeros(4, 4), ["background", "a"])["dice/a"] == 0.0


def test_slices_of_one_case_are_scored_as_one_volume():
    m = SegmentationMetrics(["background", "a", "b"])
    m.update(*_pair(), torch.tensor([0, 0]))  # both slices belong to case 0
    r = m.compute()
    assert r["dice/a"] == pytest.approx(8 / 10)  # counts summed: tp 4, fp 0, fn 2
    assert r["dice/b"] == 0.0  # tp 0, fp 1
    # slice-wise (secondary): per slice, then mean over the case's slices; slice 1's class a
    # is empty in both (left out), slice 0's class b too
    assert r["slice_dice/a"] == pytest.approx(0.8) and r["slice_dice/b"] == 0.0
    pred, target = _pair()
    volume = score_case(pred, target, ["background", "a", "b"], with_hd95=False)
    for key in ("dice/a", "dice/b", "dice/mean", "iou/a", "slice_dice/a", "slice_dice/b"):
        assert volume[key] == pytest.approx(r[key]), key


def test_aggregation_is_nanmean_over_cases_per_class_then_mean_over_classes():
    names = ["background", "a", "b"]
    rows = [
        {
            "case": "x",
            **score_case(
                np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]), names, with_hd95=False
            ),
        },
        {
            "case": "y",
            **score_case(
                np.array([[2, 0], [0, 0]]), np.array([[2, 2], [0, 0]]), names, with_hd95=False
            ),
        },
    ]
    # x: a = 2/3, b undefined; y: a undefined, b = 2/3... per class over the cases where defined
    assert math.isnan(rows[0]["dice/b"]) and math.isnan(rows[1]["dice/a"])
    summary = summarise(rows, names)
    assert summary["metrics"]["dice/a"] == {"mean": pytest.approx(2 / 3), "std": 0.0, "n": 1}
    assert summary["metrics"]["dice/mean"]["mean"] == pytest.approx(2 / 3)
    assert summary["protocol"]["empty"] == "exclude" and summary["protocol"]["version"] >= 2


def test_hd95_conventions():
    pred, target = _pair()
    d = hd95(pred, target, 3)
    assert d[0, 1] == pytest.approx(1.0)  # one column off
    assert math.isnan(d[1, 1])  # empty-empty: undefined
    assert hd95(pred, target, 3, empty="one")[1, 1] == 0.0
    assert hd95(pred, target, 3, empty="zero")[1, 1] == pytest.approx(math.hypot(8, 8))
    assert d[1, 2] == pytest.approx(math.hypot(8, 8))  # present in one only: image diagonal
    assert hd95(pred, target, 3, spacing=(2.0, 0.5))[1, 2] == pytest.approx(math.hypot(16, 4))
    perfect = hd95(target, target, 3)
    assert perfect[0, :2].tolist() == [0.0, 0.0] and math.isnan(perfect[0, 2])


def test_dice_equals_monai_where_the_truth_is_not_empty():
    from monai.metrics import DiceMetric

    torch.manual_seed(0)
    pred = torch.randint(0, 3, (3, 16, 16))
    target = torch.randint(0, 3, (3, 16, 16))
    ours = [
        score_case(p, t, ["bg", "a", "b"], with_hd95=False)
        for p, t in zip(pred, target, strict=True)
    ]
    onehot = lambda x: torch.nn.functional.one_hot(x, 3).permute(0, 3, 1, 2).float()  # noqa: E731
    monai = DiceMetric(include_background=False, reduction="none")(onehot(pred), onehot(target))
    for i, row in enumerate(ours):
        assert [row["dice/a"], row["dice/b"]] == pytest.approx(monai[i].tolist())


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


def test_write_scores_json_and_csv_round_trip(tmp_path):
    import csv
    import json

    protocol = {"version": 3, "empty": "exclude"}
    rows = [
        {"case": "a", "dice/lv": 0.5, "dice/rv": float("nan")},
        {"case": "b", "dice/lv": 1.0},  # no rv column: an empty cell
    ]
    json_path, csv_path = write_scores(
        rows, {"protocol": protocol, "dice/mean": 0.75}, tmp_path / "new" / "deep" / "scores.json"
    )
    record = json.loads(json_path.read_text())
    assert record["summary"] == {"protocol": protocol, "dice/mean": 0.75}
    assert record["cases"][0]["dice/rv"] is None, "NaN is null in strict JSON"
    with csv_path.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["dice/rv"] for r in table] == ["", ""]
    assert [r["dice/lv"] for r in table] == ["0.5", "1.0"]
    assert {r["protocol"] for r in table} == {"3"} and {r["empty"] for r in table} == {"exclude"}
    _, empty_csv = write_scores([], {"protocol": protocol}, tmp_path / "none.json")
    assert empty_csv.read_text().splitlines()[0] == "case,protocol,empty"


def test_summary_means_over_the_foreground_less_the_ignored_class_and_lists_5_worst():
    names = ["bg", "a", "b"]
    rows = [
        {"case": f"c{i}", "dice/a": a, "dice/b": 1.0, "dice/mean": (a + 1.0) / 2}
        for i, a in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    ]
    nan = math.nan  # a case where nothing is defined sorts after every score, not first
    rows.insert(0, {"case": "undefined", "dice/a": nan, "dice/b": nan, "dice/mean": nan})
    summary = summarise(rows, names, ignore_index=2)
    metrics = summary["metrics"]
    assert metrics["dice/a"]["mean"] == pytest.approx(0.4)
    assert metrics["dice/a"]["std"] == pytest.approx(0.2)  # population std of 0.1 ... 0.7
    # the headline: the mean of the foreground classes' means, b ignored (not 0.7)
    assert metrics["dice/mean"]["mean"] == pytest.approx(0.4)
    assert metrics["dice/mean"]["std"] == pytest.approx(0.1), "over the cases' own means"
    assert [w["case"] for w in summary["worst"]] == ["c0", "c1", "c2", "c3", "c4"]
    assert summary["protocol"]["hd95_one_empty"] == "diagonal"  # nnU-Net's convention
    lines = format_summary(summary).splitlines()
    assert lines[0] == "8 case(s); a class in neither prediction nor truth: exclude"
    assert lines[1].split() == ["dice/a", "0.4000", "+-", "0.2000", "(n=7)"]
    assert lines[-6:-4] == ["worst cases by mean Dice:", f"  {'c0':26s} 0.5500"]
    one = summarise(rows[1:2], names)
    assert one["num_cases"] == 1 and one["metrics"]["dice/a"] == {"mean": 0.1, "std": 0.0, "n": 1}


def test_hd95_is_the_95th_percentile_and_full_masks_are_0():
    truth = torch.zeros(1, 24, 24, dtype=torch.long)
    truth[0, 0, :19] = 1  # a line of 19 pixels
    pred = truth.clone()
    pred[0, 10, 0] = 1  # and one stray pixel 10 away: distances 19 x 0 and 10
    # linear 95th percentile of [0] * 19 + [10]: 0.95 * 19 = 18.05 -> 0.05 * 10 (the max: 10)
    assert float(hd95(pred, truth, 2)[0, 1]) == pytest.approx(0.5, abs=1e-4)
    full = torch.ones(1, 4, 4, dtype=torch.long)
    assert float(hd95(full, full, 2)[0, 1]) == 0.0, "identical masks without an edge: 0"
    # one empty: the image diagonal in the spacing's units, (8 x 2, 8 x 1), in float64
    one = (torch.arange(64).view(1, 8, 8) == 3).long()
    assert float(hd95(torch.zeros_like(one), one, 2, spacing=(2.0, 1.0))[0, 1]) == math.hypot(16, 8)


def test_unit_range_maps_each_image_min_max_to_0_1_and_a_flat_image_to_0():
    from mtlseg.targets.image import unit_range

    x = torch.stack([torch.tensor([2.0, 4.0, 6.0]), torch.tensor([-1.0, -1.0, -1.0])])
    out = unit_range(x.view(2, 1, 1, 3))
    assert out.flatten(1).tolist() == [[0.0, 0.5, 1.0], [0.0, 0.0, 0.0]]


def test_validation_scores_by_hand_with_an_ignored_class_slices_and_empty_zero():
    """Two cases of two 2x2 slices; class 2 is ignored (a void label), empty classes score 0."""
    t = torch.tensor([[[1, 1], [0, 2]], [[0, 0], [0, 0]], [[1, 0], [0, 0]], [[1, 0], [0, 0]]])
    p = torch.tensor([[[1, 0], [0, 1]], [[0, 0], [0, 0]], [[1, 0], [0, 0]], [[1, 1], [0, 0]]])
    m = SegmentationMetrics(["bg", "a", "void"], ignore_index=2, empty="zero")
    m.update(p[:2], t[:2], torch.tensor([0, 0]))
    m.update(p[2:], t[2:], torch.tensor([1, 1]))
    out = m.compute()
    # per case: a has tp 1, fn 1 (2/3) and tp 2, fp 1 (4/5); the void class is not in the mean
    assert out["dice/a"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert out["dice/mean"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # per slice: case 0 (2/3, 0: a absent from both, 0 under "zero"), case 1 (1, 2/3)
    assert out["slice_dice/a"] == pytest.approx(((2 / 3 + 0) / 2 + (1 + 2 / 3) / 2) / 2)
    assert out["pixel_accuracy"] == pytest.approx(13 / 15), "the void pixel is not counted"
    assert out["f1/mean"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # a pooled: tp 3, fp 1, fn 1
    # frequency-weighted IoU: bg 11 true pixels, IoU 10/12; a 4, IoU 3/5
    assert out["weighted_iou"] == pytest.approx((11 * 10 / 12 + 4 * 3 / 5) / 15)


def test_one_class_problems_single_pixels_and_all_undefined_means():
    one = score_case(np.zeros((2, 2)), np.zeros((2, 2)), ["tissue"], with_hd95=False)
    assert one["dice/tissue"] == 1.0 and one["dice/mean"] == 1.0, "one class: the mean is it"
    truth = np.zeros((3, 3))
    truth[1, 1] = 1
    single = score_case(truth, truth, ["bg", "dot"], with_hd95=False)
    assert single["iou/dot"] == 1.0 and single["dice/dot"] == 1.0
    empty = score_case(np.zeros((3, 3)), np.zeros((3, 3)), ["bg", "a", "b"], with_hd95=False)
    assert math.isnan(empty["dice/mean"]), "no foreground class defined: the mean is undefined"
