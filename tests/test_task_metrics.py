"""Golden values for the auxiliary tasks' metrics (boxes, classification), FiLM's
standardisation and the batched predictor's small helpers, on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mtlseg.config import FiLMConfig
from mtlseg.data.metadata import META_FIELDS
from mtlseg.engine import batched
from mtlseg.metrics.boxes import BoxMetrics, box_iou
from mtlseg.metrics.classification import ClassificationMetrics
from mtlseg.metrics.geometry import DepthMetrics
from mtlseg.models.film import FiLMGenerator


def test_box_iou_and_corner_distance_by_hand():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.6]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.6]])
    # overlap 0.0625 of union 0.25 + 0.25 - 0.0625; identical boxes 1; a zero-area pair 0
    assert box_iou(a, b).tolist() == pytest.approx([0.0625 / 0.4375, 1.0, 0.0])
    m = BoxMetrics(size=100)
    valid = torch.tensor([[1.0], [1.0], [0.0]])  # the third image has no box: skipped
    m.update(a, torch.cat([valid, b], 1))
    out = m.compute()
    # the first pair's corners differ by 0.25 in each of 4 coordinates: L2 0.5 of 100 px
    assert float(out["l2"]) == pytest.approx((50.0 + 0.0) / 2)
    assert float(out["iou"]) == pytest.approx((0.0625 / 0.4375 + 1.0) / 2)


def test_box_metrics_accumulate_over_updates_with_asymmetric_boxes():
    pred = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 0.4], [0.0, 0.0, 0.5, 0.5]])
    box = torch.tensor([[0.3, 0.0, 0.8, 0.6], [0.0, 0.0, 1.0, 0.5], [0.5, 0.5, 1.0, 1.0]])
    # overlap 0.2 x 0.4 of union 0.28 + 0.30 - 0.08; 0.4 / 0.5; corners touching: 0
    iou = [0.08 / 0.5, 0.8, 0.0]
    assert box_iou(pred, box).tolist() == pytest.approx(iou)
    m = BoxMetrics(size=10)
    m.update(pred[:2], torch.cat([torch.ones(2, 1), box[:2]], 1))
    m.update(pred[2:], torch.cat([torch.ones(1, 1), box[2:]], 1))
    out = m.compute()
    # per-box corner distances: sqrt(.2^2+.2^2+.3^2+.3^2), 0.1, sqrt(4 x .5^2) = 1; x 10 px
    assert float(out["l2"]) == pytest.approx(10 * (math.sqrt(0.26) + 0.1 + 1.0) / 3)
    assert float(out["iou"]) == pytest.approx(sum(iou) / 3)


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    m = ClassificationMetrics(3)
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0], [0, 5.0, 0]])
    m.update(logits, torch.tensor([0, 0, 1, 1]))  # class 2 never occurs
    out = m.compute()
    assert float(out["accuracy"]) == pytest.approx(3 / 4)
    assert out["recall"][:2].tolist() == pytest.approx([1.0, 0.5])
    assert math.isnan(float(out["recall"][2]))
    assert float(out["balanced_accuracy"]) == pytest.approx(0.75)  # (1 + 0.5) / 2
    m.update(torch.tensor([2]), torch.tensor([2]))  # class indices work as predictions too
    assert float(m.compute()["balanced_accuracy"]) == pytest.approx((1 + 0.5 + 1) / 3)


def test_film_standardises_with_the_training_statistics_and_ignores_unknowns():
    film = FiLMGenerator(FiLMConfig(fields=["position", "height"], hidden=4, layers=2), 3)
    meta = torch.full((4, len(META_FIELDS)), float("nan"))
    meta[:, META_FIELDS.index("position")] = torch.tensor([0.0, 0.5, 1.0, float("nan")])
    meta[:, META_FIELDS.index("height")] = torch.tensor([100.0, 100.0, 100.0, 100.0])
    film.set_statistics(meta)
    assert film.mean.tolist() == pytest.approx([0.5, 100.0])
    assert film.std[0].item() == pytest.approx(math.sqrt(1 / 6))  # population std of 0, .5, 1
    assert film.std[1].item() == 1.0, "a constant field keeps std 1 (no division by 0)"
    for layer in (film.scale[-1], film.shift[-1]):  # zero output: gamma 1, beta 0
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    gamma, beta = film(meta)
    assert torch.equal(gamma, torch.ones(4, 3)) and torch.equal(beta, torch.zeros(4, 3))


def test_the_default_readers_follow_the_cores(monkeypatch):
    for cores, readers in ((1, 0), (2, 0), (4, 2), (16, 4)):
        monkeypatch.setattr(batched.os, "sched_getaffinity", lambda _, n=cores: set(range(n)))
        assert batched.default_readers() == readers, cores


def _box_batches():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.1, 0.1, 0.9, 0.9], [0.2, 0.2, 0.4, 0.6]])
    b = torch.tensor([[1.0, 0.25, 0.25, 0.75, 0.75], [1.0, 0.0, 0.0, 1.0, 1.0], [0, 0, 0, 0, 0]])
    return [(a[:2], b[:2]), (a[2:], b[2:]), (a, b)]


def _class_batches():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    return [(logits[:3], torch.tensor([0, 2, 2])), (logits[3:], torch.tensor([1]))]


def _depth_batches():
    t = torch.tensor([[1.0, 0.5, 0.0, 2.0]])
    v = torch.tensor([[True, True, True, False]])
    return [(torch.tensor([[1.5, 0.5, 0.2, 9.0]]), (t, v)), (t * 3, (t, torch.ones_like(v)))]


@pytest.mark.parametrize(
    "make, batches",
    [
        (lambda: BoxMetrics(size=64), _box_batches),
        (lambda: ClassificationMetrics(3), _class_batches),
        (DepthMetrics, _depth_batches),
    ],
    ids=["boxes", "classification", "depth"],
)
def test_metrics_merged_over_processes_equal_one_process_on_all_batches(make, batches):
    """What DDP does at compute time (each state reduced over the processes by its
    ``dist_reduce_fx``), done by torchmetrics' ``merge_state`` on two halves of the batches."""
    whole, first, second = make(), make(), make()
    for i, batch in enumerate(batches()):
        whole.update(*batch)
        (first if i % 2 == 0 else second).update(*batch)
    first.merge_state(second)
    for key, value in whole.compute().items():
        assert torch.allclose(first.compute()[key], value, equal_nan=True), key


def test_depth_metrics_over_two_updates_with_a_target_at_the_relative_bound():
    m = DepthMetrics(min_target=0.5)
    t = torch.tensor([[2.0]])
    m.update(torch.tensor([[3.0]]), (t, torch.ones_like(t, dtype=torch.bool)))
    one = m.compute()  # one pixel: |3 - 2| = 1, relative 1 / 2
    assert (float(one["abs_err"]), float(one["rel_err"])) == (1.0, 0.5)
    t = torch.tensor([[0.5, 7.0]])  # 0.5 is at the bound: counted; 7.0 is not valid
    m.update(torch.tensor([[0.1, 0.0]]), (t, torch.tensor([[True, False]])))
    out = m.compute()
    assert float(out["abs_err"]) == pytest.approx((1.0 + 0.4) / 2)
    assert float(out["rel_err"]) == pytest.approx((0.5 + 0.4 / 0.5) / 2)


def test_classification_accuracy_of_one_sample():
    m = ClassificationMetrics(2)
    m.update(torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    out = m.compute()
    assert float(out["accuracy"]) == 1.0 and float(out["balanced_accuracy"]) == 1.0


def test_depth_relative_error_leaves_out_targets_below_1e3_by_default():
    m = DepthMetrics()
    t = torch.tensor([[0.0005, 0.001, 2.0]])
    m.update(torch.tensor([[0.0, 0.002, 3.0]]), (t, torch.ones_like(t, dtype=torch.bool)))
    # 0.0005 is below the bound; 0.001 is at it: |0.002 - 0.001| / 0.001 = 1; |3 - 2| / 2
    assert float(m.compute()["rel_err"]) == pytest.approx((1.0 + 0.5) / 2)
