"""Paper 002: SegNet/MTAN, image-level and self-supervised tasks, DWA/SoftAdapt, on real data."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation
from skimage import color, feature, io

from mtlseg.data.annotations import read_boxes
from mtlseg.data.transforms import Augment2D
from mtlseg.engine.data import prepare_data
from mtlseg.engine.inference import evaluate, predict
from mtlseg.engine.module import build_model_and_tasks
from mtlseg.engine.train import train
from mtlseg.errors import ConfigError, DataError
from mtlseg.metrics.segmentation import pooled_scores
from mtlseg.models import build_backbone
from mtlseg.models.segnet import VGG16_WIDTHS
from mtlseg.settings import load_config
from mtlseg.targets.image import canny_edges, grey, lab, unit_range
from mtlseg.tasks.image_level import mask_boxes
from mtlseg.weighting import build_weighting
from tests.conftest import KVASIR, TINY_SEGNET, require_data, validation_of

TINY = {"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 2, 1, 1]}
# torchvision's vgg16_bn ``features`` indices of the 13 convolutions (BN at index + 1)
VGG16_BN_CONVS = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]


def _kvasir_rgb(i: int = 3) -> torch.Tensor:
    files = sorted((require_data(KVASIR) / "images").iterdir())
    return torch.from_numpy(io.imread(files[i]).astype(np.float32) / 255).permute(2, 0, 1)[None]


# ---------------------------------------------------------------- architectures
def test_segnet_unpools_values_where_the_pooling_took_them():
    torch.manual_seed(0)
    net = build_backbone("segnet", TINY, 3, 2).eval()
    x = F.interpolate(_kvasir_rgb(), size=(36, 44), mode="bilinear")  # odd pooled sizes
    seen = {}
    net.decoder.blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    encoded = net.encode(x)
    logits, _ = net(x)
    assert logits.shape == (1, 2, 36, 44)
    deepest = encoded[-1]
    unpooled = seen["in"]  # decoder input: the (primary) bottleneck unpooled
    assert unpooled.shape == deepest["last"].shape
    # every pooled maximum is back at the position it came from, and nothing else is set
    flat = unpooled.flatten(2)
    taken = flat.gather(2, deepest["indices"].flatten(2))
    assert torch.equal(taken, deepest["pooled"].flatten(2))
    assert int((flat != 0).sum()) <= deepest["pooled"].numel()
    # ... and those positions hold the window maxima of the pre-pool map
    assert torch.equal(deepest["last"].flatten(2).gather(2, deepest["indices"].flatten(2)), taken)


def test_mtan_unpools_the_attended_bottleneck_at_its_own_maxima():
    """The decoder's first unpooling puts each channel of the primary task's attended map
    where that map's own maxima were, not at the shared (unattended) map's argmax."""
    torch.manual_seed(0)
    net = build_backbone("mtan", TINY, 3, 2, task_names=["segmentation", "bbox"]).eval()
    x = F.interpolate(_kvasir_rgb(), size=(36, 44), mode="bilinear")
    seen, pre = {}, []
    net.decoder.blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault("in", i[0]))
    net.block_att[-1].register_forward_hook(lambda m, i, o: pre.append(o))  # once per task
    with torch.no_grad():
        _, features = net(x)
    attended = pre[0]  # the primary task's deepest attended map, before its pooling
    pooled, own = F.max_pool2d(attended, 2, 2, ceil_mode=True, return_indices=True)
    assert torch.equal(pooled, features["segmentation/bottleneck"])
    expected = F.max_unpool2d(pooled, own, 2, 2, output_size=attended.shape[-2:])
    assert torch.equal(seen["in"], expected)
    shared = net.encode(x)[-1]["indices"]
    assert not torch.equal(own, shared), "the shared map's argmax differs: the test can fail"


def test_segnet_encoder_has_torchvision_vgg16_bn_names():
    keys = set(build_backbone("segnet", {}, 3, 2).encoder.state_dict())
    for i in VGG16_BN_CONVS:
        assert {f"features.{i}.weight", f"features.{i}.bias"} <= keys
        assert f"features.{i + 1}.running_var" in keys  # its batch norm
    assert len([k for k in keys if k.endswith(".weight")]) == 26  # 13 convs + 13 BNs
    assert build_backbone("segnet", {}, 3, 2).encoder.features[0].out_channels == VGG16_WIDTHS[0]


def test_vgg_weights_load_report_keys_and_adapt_the_first_conv(tmp_path):
    torch.manual_seed(0)
    source = build_backbone("segnet", TINY, 3, 2)
    state = dict(source.encoder.state_dict())
    state["classifier.0.weight"] = torch.zeros(3, 3)  # a full VGG's classifier
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    grey_net = build_backbone("segnet", {**TINY, "weights": str(path)}, 1, 2)
    assert grey_net.weights_report["unexpected"] == ["classifier.0.weight"]
    assert grey_net.weights_report["missing"] == []
    first = grey_net.encoder.features[0].weight
    assert first.shape[1] == 1
    assert torch.allclose(first, state["features.0.weight"].sum(1, keepdim=True))
    assert torch.equal(grey_net.encoder.features[4].weight, state["features.4.weight"])
    wide = build_backbone("segnet", TINY, 3, 2).encoder.state_dict()
    wide["features.4.weight"] = torch.zeros(8, 5, 3, 3)
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match=r"wide.pth: .*another shape.*features.4.weight"):
        build_backbone("segnet", {**TINY, "weights": str(tmp_path / "wide.pth")}, 3, 2)


def test_mtan_masks_are_soft_per_task_and_heads_read_their_own_features():
    torch.manual_seed(0)
    net = build_backbone("mtan", TINY, 3, 2, ["seg", "cls"]).eval()
    x = F.interpolate(_kvasir_rgb(), size=(32, 32), mode="bilinear")
    logits, feats = net(x)
    for j in range(1, 6):
        a, b = feats[f"seg/attention{j}"], feats[f"cls/attention{j}"]
        assert a.min() > 0 and a.max() < 1 and b.min() > 0 and b.max() < 1
        assert not torch.allclose(a, b)  # separate attention modules per task
    own = net.task_features(feats, "cls")
    assert torch.equal(own["bottleneck"], feats["cls/bottleneck"])
    assert torch.equal(own["decoder5"], feats["decoder5"])  # the shared decoder
    assert not torch.equal(own["bottleneck"], net.task_features(feats, "seg")["bottleneck"])
    segnet = build_backbone("segnet", TINY, 3, 2)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(segnet) < count(net)


# ---------------------------------------------------------------- targets
def test_canny_target_matches_scikit_image_on_a_real_image():
    x = _kvasir_rgb()
    ours = canny_edges(x, 0.1, 0.2, 1.0)[0, 0].numpy() > 0
    g = grey(unit_range(x))[0, 0].numpy()
    ref = feature.canny(g, sigma=1.0, low_threshold=0.1, high_threshold=0.2)
    assert ours.sum() > 500 and ref.sum() > 500
    # both are Sobel-magnitude Canny; NMS/hysteresis details differ by a pixel at most here
    assert (ours & binary_dilation(ref)).sum() / ours.sum() > 0.9
    assert (ref & binary_dilation(ours)).sum() / ref.sum() > 0.9


def test_grey_is_luma_for_rgb_and_the_mean_otherwise():
    red = torch.zeros(1, 3, 5, 4)
    red[:, 0] = 1.0
    assert torch.allclose(grey(red), torch.full((1, 1, 5, 4), 0.299))  # ITU-R BT.601 luma
    four = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 3, 3)
    assert torch.allclose(grey(four), torch.full((1, 1, 3, 3), 1.5))


def test_canny_high_threshold_keeps_only_strong_edges():
    x = _kvasir_rgb()
    low, high = canny_edges(x, 0.1, 0.2, 1.0), canny_edges(x, 0.1, 0.6, 1.0)
    assert bool((high <= low).all()), "a higher threshold only removes edges"
    assert 0 < float(high.sum()) < 0.9 * float(low.sum())


def test_lab_target_matches_scikit_image():
    x = _kvasir_rgb()
    ours = lab(x)[0].permute(1, 2, 0).numpy()
    ref = color.rgb2lab(unit_range(x)[0].permute(1, 2, 0).numpy())
    assert np.allclose(ours[..., 0], ref[..., 0] / 50 - 1, atol=2e-3)
    assert np.allclose(ours[..., 1:], ref[..., 1:] / 110, atol=2e-3)


def test_boxes_from_masks_include_the_pixel_edges():
    mask = torch.zeros(2, 8, 10, dtype=torch.long)
    mask[0, 2:5, 3:7] = 1
    valid, box = mask_boxes(mask)
    assert valid.tolist() == [1.0, 0.0]
    assert torch.allclose(box[0], torch.tensor([3 / 10, 2 / 8, 7 / 10, 5 / 8]))


def test_boxes_follow_flips_and_affine_transforms(kvasir_boxed):
    data = prepare_data(load_config("unet", [f"data.path={kvasir_boxed}"]).data)
    box = data.val.boxes[data.val.meta[0]["case_id"]]
    assert box is not None and all(0 <= v <= 1 for v in box)
    size = 96
    x1, y1, x2, y2 = (round(v * size) for v in box)
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[y1:y2, x1:x2] = 1  # the box itself as a mask: its box must follow the same way
    image = torch.rand(3, size, size)
    aug = Augment2D("strong")
    torch.manual_seed(0)
    moved = 0
    for _ in range(12):
        _, a_mask, a_box = aug(image, mask, (x1 / size, y1 / size, x2 / size, y2 / size))
        valid, expected = mask_boxes(a_mask[None])
        if not valid[0]:
            continue
        assert a_box is not None
        assert np.allclose(a_box, expected[0].numpy(), atol=3 / size)
        moved += int(not np.allclose(a_box, (x1 / size, y1 / size, x2 / size, y2 / size)))
    assert moved >= 6
    flip = Augment2D("flips")
    for _ in range(10):
        out_image, _, fb = flip(image, mask, (0.1, 0.2, 0.4, 0.9))
        flipped = torch.equal(out_image, image.flip(-1))
        assert np.allclose(fb, (0.6, 0.2, 0.9, 0.9) if flipped else (0.1, 0.2, 0.4, 0.9))


# ---------------------------------------------------------------- weighting and metrics
def _losses(a, b):
    return {"seg": torch.tensor(float(a)), "aux": torch.tensor(float(b))}


def test_dwa_weights_equal_the_hand_computed_values():
    w = build_weighting(
        "dwa", {"unit": "step", "every": 2, "temperature": 2.0}, {"seg": 1, "aux": 1}, "seg"
    )
    # periods: means (0.3, 0.2), then (0.2, 0.1); losses below 1 (the clamp guards only 0)
    history = [(0.4, 0.2), (0.2, 0.2), (0.2, 0.1), (0.2, 0.1), (0.1, 0.1)]
    got = [w.weights(_losses(*pair), step) for step, pair in enumerate(history)]
    assert got[3] == {"seg": 1.0, "aux": 1.0}  # two periods are not complete yet
    r = np.array([2 / 3, 1 / 2])  # L(t-1) / L(t-2)
    expected = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    assert np.allclose([got[4]["seg"], got[4]["aux"]], expected)
    state = w.state_dict()
    again = build_weighting("dwa", {"unit": "step", "every": 2}, {"seg": 1, "aux": 1}, "seg")
    again.load_state_dict(state)  # the history survives a checkpoint
    assert np.allclose(float(again.factors()[0]), expected[0])


def test_softadapt_weights_equal_the_hand_computed_values():
    params = {"unit": "step", "beta": 3.0, "normalized": True}
    w = build_weighting("softadapt", params, {"seg": 1.0, "aux": 0.5}, "seg")
    for step, pair in enumerate([(1.0, 2.0), (0.5, 1.8), (0.5, 1.8)]):
        got = w.weights(_losses(*pair), step)
    s = np.array([0.5 - 1.0, 1.8 - 2.0])
    s = s / np.abs(s).sum()
    alpha = np.exp(3 * s) / np.exp(3 * s).sum()
    assert np.allclose([got["seg"], got["aux"] / 0.5], 2 * alpha)
    lw = build_weighting(
        "softadapt", {**params, "loss_weighted": True}, {"seg": 1, "aux": 1}, "seg"
    )
    for step, pair in enumerate([(1.0, 2.0), (0.5, 1.8), (0.5, 1.8)]):
        got = lw.weights(_losses(*pair), step)
    alpha = np.array([0.5, 1.8]) * np.exp(3 * s)
    assert np.allclose([got["seg"], got["aux"]], 2 * alpha / alpha.sum())


def test_softadapt_unnormalised_slopes_are_of_period_means():
    w = build_weighting(
        "softadapt", {"unit": "step", "every": 2, "beta": 1.0, "normalized": False},
        {"seg": 1.0, "aux": 1.0}, "seg",
    )  # fmt: skip
    pairs = [(1.0, 3.0), (3.0, 1.0), (0.5, 0.5), (1.5, 0.5), (9.0, 9.0)]  # means (2, 2), (1, 0.5)
    for step, pair in enumerate(pairs):
        got = w.weights(_losses(*pair), step)
    s = np.array([1.0 - 2.0, 0.5 - 2.0])  # slopes of the period means, not of their sums
    assert np.allclose([got["seg"], got["aux"]], 2 * np.exp(s) / np.exp(s).sum())


def test_dwa_periods_by_epoch_ignore_the_step():
    w = build_weighting("dwa", {"unit": "epoch", "temperature": 1.0}, {"seg": 1, "aux": 1}, "seg")
    # steps 0-2 in epoch 0 (means 2, 1), steps 3-4 in epoch 1 (means 1, 1), then epoch 2
    for step, (epoch, pair) in enumerate(
        [(0, (2, 1)), (0, (2, 1)), (0, (2, 1)), (1, (1, 1)), (1, (1, 1)), (2, (5, 5))]
    ):
        got = w.weights(_losses(*pair), step, epoch)
    r = np.array([1 / 2, 1 / 1])
    assert np.allclose([got["seg"], got["aux"]], 2 * np.exp(r) / np.exp(r).sum())


def test_weighted_iou_and_pixel_f1_by_hand():
    # class 0: 90 true px, IoU 80/100; class 1: 10 true px, tp 5, fp 10, fn 5
    tp, fp, fn = torch.tensor([80.0, 5.0]), torch.tensor([10.0, 10.0]), torch.tensor([10.0, 5.0])
    scores = pooled_scores(tp, fp, fn)
    assert math.isclose(scores["f1/mean"], 10 / 25, rel_tol=1e-6)
    assert math.isclose(scores["weighted_iou"], 0.9 * 0.8 + 0.1 * 5 / 20, rel_tol=1e-6)


# ---------------------------------------------------------------- end to end
RECIPES_ACDC = ["segnet", "segnet-3task", "mtan-3task", "mtan-no-bbox", "mtan-no-class"]
RECIPES_KVASIR = ["mtan-canny", "mtan-denoise", "mtan-colour"]


def _run(recipe, data, out, steps, *extra):
    cfg = load_config(
        recipe,
        [
            *TINY_SEGNET,
            f"data.path={data}",
            f"train.max_steps={steps}",
            "train.val_every=2",
            *extra,
        ],
    )
    resume = (out / "checkpoints" / "last.ckpt").is_file()
    return train(cfg, out, resume=resume)


@pytest.mark.parametrize("recipe", RECIPES_ACDC + RECIPES_KVASIR)
def test_every_paper002_recipe_trains_resumes_and_predicts(
    recipe, acdc_labelled, kvasir_boxed, tmp_path
):
    on_kvasir = recipe in RECIPES_KVASIR
    data = kvasir_boxed if on_kvasir else acdc_labelled
    extra = ["tasks.1.enabled=false"] if on_kvasir else []  # Kvasir has no case labels
    out = tmp_path / "run"
    _run(recipe, data, out, 2, *extra)
    result = _run(recipe, data, out, 4, *extra)
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == 4
    metrics = evaluate(result.best_checkpoint, str(data), "val")
    # a re-evaluation of the checkpoint reproduces what validation logged for it
    logged = validation_of(result.best_checkpoint)
    assert metrics["dice/mean"] == pytest.approx(logged["val/dice"], abs=1e-6)
    for key in ("f1/mean", "weighted_iou"):
        assert metrics[key] == pytest.approx(logged[f"val/{key}"], abs=1e-6), key
    cfg = load_config(recipe, [*TINY_SEGNET, *extra])
    names = {t.kind: t.name for t in cfg.tasks}
    for kind, key in (("classification", "accuracy"), ("bbox", "iou"), ("bbox", "l2")):
        if kind in names:
            got, want = metrics[f"task/{names[kind]}/{key}"], logged[f"val/{names[kind]}/{key}"]
            assert got == pytest.approx(want, abs=1e-5), (kind, key)
    if "classification" in names:
        assert "task/classification/recall/DCM" in metrics
    for t in cfg.tasks[1:]:
        assert metrics[f"task/{t.name}/loss"] == pytest.approx(
            logged[f"val/loss_{t.name}"], rel=1e-5
        )
    source = sorted((data / ("images" if on_kvasir else "imagesTr")).iterdir())[0]
    written = predict(result.best_checkpoint, source, tmp_path / "pred")
    assert len(written) == 1 and written[0].is_file()


def test_classification_learns_the_phase_on_real_slices(acdc_labelled, tmp_path):
    """A real signal: ED vs ES is visible in the heart's size, so accuracy leaves chance."""
    cfg = load_config(
        "segnet",
        [
            *TINY_SEGNET,
            f"data.path={acdc_labelled}",
            "train.max_steps=60",
            "train.val_every=60",
            "train.lr=3e-3",
        ],
    )
    cfg.tasks.append(
        type(cfg.tasks[0])(kind="classification", params={"column": "phase", "hidden": 16})
    )
    result = train(cfg, tmp_path / "run")
    metrics = evaluate(result.best_checkpoint, str(acdc_labelled), "train")
    assert metrics["task/classification/loss"] < math.log(2)  # below the chance-level CE


# ---------------------------------------------------------------- bad input
def _build(recipe, data, *extra):
    from mtlseg.engine.train import build_module

    cfg = load_config(recipe, [*TINY_SEGNET, f"data.path={data}", *extra])
    return build_module(cfg, prepare_data(cfg.data))


def test_labels_file_missing_cases_is_named(acdc_labelled):
    csv = acdc_labelled / "case_labels.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=r"case_labels.csv: 1 case\(s\) have no 'pathology' label"):
        _build("segnet-3task", acdc_labelled)


def test_a_task_without_its_labels_file_names_the_way_out(kvasir_boxed):
    """Kvasir-SEG has boxes but no case labels: the 3-task recipe's classification cannot
    train, and the error says how to train the recipe without it (and that works)."""
    with pytest.raises(
        DataError,
        match=r"tasks.classification: needs a labels file.*\n.*--set "
        r"tasks.classification.enabled=false",
    ):
        _build("mtan-3task", kvasir_boxed)
    module = _build("mtan-3task", kvasir_boxed, "tasks.classification.enabled=false")
    assert [t.name for t in module.tasks] == ["segmentation", "bbox"]


def test_labels_file_unknown_class_and_column(acdc_labelled):
    with pytest.raises(
        DataError, match=r"case_labels.csv: no column 'diagnosis'.*pathology, phase"
    ):
        _build("segnet-3task", acdc_labelled, "tasks.1.params.column=diagnosis")
    with pytest.raises(DataError, match=r"case_labels.csv: unknown 'pathology' value 'RV'"):
        _build("segnet-3task", acdc_labelled, "tasks.1.params.classes=[DCM,HCM,MINF,NOR]")


def test_box_outside_the_image_and_foreign_box_file(kvasir_boxed):
    path = kvasir_boxed / "kavsir_bboxes.json"
    boxes = json.loads(path.read_text())
    first = sorted(boxes)[0]
    boxes[first]["bbox"][0]["xmax"] = boxes[first]["width"] + 5
    path.write_text(json.dumps(boxes))
    with pytest.raises(
        DataError, match=rf"kavsir_bboxes.json: box .* of '{first}' is empty or outside"
    ):
        read_boxes(path, sorted(boxes))
    with pytest.raises(DataError, match="none of its 12 image ids is in the dataset"):
        read_boxes(path, ["another-image"])


def test_colourisation_on_grey_images_is_refused(acdc_labelled):
    with pytest.raises(DataError, match=r"acdc-labelled: model.input=lightness needs 3-channel"):
        _build("mtan-colour", acdc_labelled)
    with pytest.raises(ConfigError, match="set model.input: lightness"):
        cfg = load_config("mtan-colour", [*TINY_SEGNET, "model.input=image"])
        build_model_and_tasks(cfg, 3, 2, {"pathology": ["a", "b"]})
