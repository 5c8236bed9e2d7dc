"""Paper 003: context ensemble, ASPP backbones, presence/scene tasks, sync-regularisation and
staged training, on real ACDC slices with tiny widths."""

import csv
import math

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtlseg.config import StageConfig
from mtlseg.engine.inference import evaluate, predict
from mtlseg.engine.module import build_model_and_tasks
from mtlseg.engine.stages import StagePlan
from mtlseg.engine.train import train
from mtlseg.errors import ConfigError, DataError
from mtlseg.losses import SEG_LOSSES
from mtlseg.models import build_backbone
from mtlseg.models.context import ContextEnsemble
from mtlseg.settings import load_config
from mtlseg.tasks.image_level import mask_presence
from mtlseg.terms import build_terms
from mtlseg.terms.sync import bernoulli_kl
from mtlseg.weighting import build_weighting
from tests.conftest import ACDC, TINY_SEGNET, power_cut_at, require_data, validation_of

TINY_ASPP = [
    *TINY_SEGNET,
    "model.params.decoder_channels=8",
    "tasks.0.params.deep_supervision=1",
]
SMALL_HEADS = ["tasks.presence.params.hidden=8"]
RECIPES = ["aspp", "aspp-class", "aspp-class-sync", "aspp-decomp"]


def _acdc_slices(case: str = "patient002_frame01") -> torch.Tensor:
    """All slices of one real ACDC label volume, (D, H, W) int64."""
    path = ACDC / "labelsTr" / f"{case}.nii.gz"
    require_data(ACDC)
    return torch.from_numpy(np.asarray(nib.load(path).dataobj).astype(np.int64)).permute(2, 0, 1)


# ---------------------------------------------------------------- model parts
@pytest.mark.parametrize("rates", [[4, 2, 1], [63, 31, 15, 3, 1]])
@pytest.mark.parametrize("merge", ["sum", "concat"])
def test_context_ensemble_keeps_the_size_and_its_receptive_field_matches_the_rates(rates, merge):
    ce = ContextEnsemble(1, rates, merge).eval()
    for m in ce.modules():  # positive weights and inputs: every ReLU passes, nothing cancels
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.constant_(m.weight, 0.1)
    n = ce.receptive_field + 20
    x = torch.rand(1, 1, n, n, requires_grad=True)
    y = ce(x)
    assert y.shape == x.shape
    y[0, 0, n // 2, n // 2].backward()
    seen = (x.grad[0, 0] != 0).nonzero()
    extent = (seen.max(0).values - seen.min(0).values + 1).tolist()
    assert extent == [1 + 2 * sum(rates)] * 2 == [ce.receptive_field] * 2


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("vgg-aspp", {"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1]}),
        ("vgg-aspp", {"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1], "output_stride": 8}),
        ("vgg-aspp", {"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1], "output_stride": 4}),
        ("unet-aspp", {"channels": [4, 8, 16, 16]}),
    ],
)
def test_aspp_backbones_keep_the_input_size_and_declare_their_features(name, params):
    net = build_backbone(name, {**params, "decoder_channels": 8}, 1, 4)
    logits, feats = net(torch.randn(2, 1, 44, 36))  # not a multiple of the stride
    assert logits.shape == (2, 4, 44, 36)
    assert set(feats) == set(net.feature_info)
    for key, f in feats.items():
        info = net.feature_info[key]
        assert f.shape[1] == info.channels
        assert f.shape[-2] == math.ceil(44 / info.stride), key
    assert feats["bottleneck"].shape == feats[f"encoder{len(feats) - 3}"].shape


def test_a_dilated_encoder_keeps_its_weights_and_its_receptive_field():
    """output_stride 8: the last two pools go, the last block's convs dilate by 2 (DeepLab);
    the same weights load, and the deepest map is 4x larger per side."""
    params = {"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1], "decoder_channels": 8}
    plain = build_backbone("vgg-aspp", params, 1, 4)
    dilated = build_backbone("vgg-aspp", {**params, "output_stride": 8}, 1, 4)
    dilated.load_state_dict(plain.state_dict())  # same keys and shapes
    convs = [m for m in dilated.encoder.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 1, 1, 2]
    assert dilated.feature_info["bottleneck"].stride == 8
    assert dilated(torch.randn(1, 1, 64, 64))[1]["bottleneck"].shape[-1] == 8
    with pytest.raises(ConfigError, match="output_stride: expected a power of two"):
        build_backbone("vgg-aspp", {**params, "output_stride": 6}, 1, 4)


def test_the_rates_that_reach_only_padding_are_logged_at_build_time(caplog):
    cfg = load_config("aspp", [*TINY_ASPP, "data.image_size=96"])
    with caplog.at_level("INFO"):
        build_model_and_tasks(cfg, 1, 4)
    # stride 8 at 96 px: a 12 x 12 latent; rates 63, 31 and 15 see only padding there
    assert "rates [63, 31, 15] of [63, 31, 15, 3, 1] reach only padding" in caplog.text
    net = build_backbone("vgg-aspp", {**_tiny_vgg(), "output_stride": 4}, 1, 4)
    assert net.describe(128) == [
        "context ensemble on the stride-4 latent (32x32 at 128 px): rates [63] of "
        "[63, 31, 15, 3, 1] reach only padding (they act as 1x1 convolutions); a smaller "
        "model.params.output_stride or larger input lets them act"
    ]
    # a rate below the map's size is not listed: at 2048 px on stride 32 every rate acts
    assert "every rate" in build_backbone("vgg-aspp", _tiny_vgg(), 1, 4).describe(2048)[0]
    none = build_backbone("vgg-aspp", {**_tiny_vgg(), "context": False}, 1, 4)
    assert none.describe(96) == [] and not any(
        isinstance(m, ContextEnsemble) for m in none.modules()
    )


def _tiny_vgg() -> dict:
    return {"widths": [4, 8, 8, 16, 16], "convs": [1, 1, 1, 1, 1], "decoder_channels": 8}


def test_aspp_backbone_rejects_a_low_level_it_does_not_have():
    with pytest.raises(ConfigError, match="low_level=7"):
        build_backbone("unet-aspp", {"channels": [4, 8, 16], "low_level": 7}, 1, 2)


# ---------------------------------------------------------------- tasks, loss, sync
def test_presence_targets_are_the_classes_in_real_masks():
    masks = _acdc_slices()
    target = mask_presence(masks, 4)
    for mask, row in zip(masks, target, strict=True):
        expected = [float(k in set(mask.unique().tolist())) for k in (1, 2, 3)]
        assert row.tolist() == expected
    assert target.sum() > 0 and (target == 0).any()  # real data has both


def test_ce_iou_is_cross_entropy_plus_one_minus_soft_iou():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 3, (2, 8, 8))
    p = logits.softmax(1)
    onehot = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    inter = (p * onehot).sum((2, 3))
    union = (p + onehot).sum((2, 3)) - inter
    iou = (inter + 1e-5) / (union + 1e-5)  # MONAI's smoothing
    expected = F.cross_entropy(logits, labels) + (1 - iou).mean()
    got = SEG_LOSSES.get("ce-iou")()(logits, labels)
    assert torch.allclose(got, expected, atol=1e-5)


def _decomp_model(acdc_labelled, recipe="aspp-decomp"):
    cfg = load_config(recipe, [*TINY_ASPP, *SMALL_HEADS, f"data.path={acdc_labelled}"])
    labels = {"pathology": ["DCM", "HCM", "MINF", "NOR", "RV"]}
    model, tasks = build_model_and_tasks(cfg, 1, 4, labels)
    return cfg, model, tasks


def test_sync_term_is_paper_eq_3_a_bce_on_the_class_branch_against_the_hard_segmentation(
    acdc_labelled,
):
    cfg, model, tasks = _decomp_model(acdc_labelled)
    (sync,) = build_terms(cfg.terms, tasks)
    # hand-made: image 0 predicts classes 1 and 3 somewhere, image 1 only background
    seg = torch.zeros(2, 4, 8, 8)
    seg[:, 0] = 1.0
    seg[0, 1, 0, 0] = 5.0  # one pixel of class 1 is enough: "volume greater than 0"
    seg[0, 3, 4:6, 4:6] = 5.0
    seg[0, 2, 2, 2] = 1.5  # class 2 is probable at one pixel, but background wins it:
    seg[0, 0, 2, 2] = 2.0  # hard labels, so class 2 is absent
    seg.requires_grad_(True)
    head = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    q = torch.sigmoid(head)
    expected = -(target * q.log() + (1 - target) * (1 - q).log()).mean()
    loss = sync({"segmentation": seg, "presence": head}, {})  # no ground truth in the batch
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert seg.grad is None or not seg.grad.any(), "no gradient reaches the segmentation"
    assert head.grad.abs().sum() > 0
    assert torch.allclose(head.grad, (torch.sigmoid(head) - target).detach() / 6)


def test_sync_feedback_goes_through_the_class_branch_only(acdc_labelled):
    """In the model: the presence head and the shared encoder get a gradient from L_sync,
    the segmentation decoder none."""
    cfg, model, tasks = _decomp_model(acdc_labelled)
    (sync,) = build_terms(cfg.terms, tasks)
    outputs = model(torch.randn(2, 1, 64, 64))
    sync(outputs, {}).backward()

    def grads(module):
        return [p.grad for p in module.parameters() if p.grad is not None and p.grad.any()]

    assert grads(model.heads["presence"]), "the class branch learns from it"
    assert grads(model.backbone.encoder), "and through it the shared latent space"
    assert not grads(model.backbone.decoder), "the segmentation branch gets no feedback"


def test_the_bidirectional_variant_trains_both_branches(acdc_labelled):
    cfg, model, tasks = _decomp_model(acdc_labelled)
    term_cfg = cfg.terms[0]
    term_cfg.kind = "sync-bidirectional"
    (sync,) = build_terms([term_cfg], tasks)
    masks = _acdc_slices()[3:7, :64, :64]
    agree = F.one_hot(masks, 4).permute(0, 3, 1, 2).float() * 40.0  # confident, correct
    presence = mask_presence(masks, 4) * 80.0 - 40.0  # logits of the same presence
    assert sync({"segmentation": agree, "presence": presence}, {}).item() < 1e-4
    wrong = (-presence / 20.0).requires_grad_(True)  # the presence head says the opposite
    seg = (agree / 20.0).requires_grad_(True)  # unsaturated, so gradients are not vanishing
    loss = sync({"segmentation": seg, "presence": wrong}, {})
    assert loss.item() > 1.0
    loss.backward()
    assert seg.grad.abs().sum() > 0 and wrong.grad.abs().sum() > 0
    p = torch.tensor([0.2, 0.7])
    assert torch.allclose(bernoulli_kl(p, p), torch.zeros(2), atol=1e-6)
    assert (bernoulli_kl(p, p.flip(0)) > 0).all()


def test_the_model_gives_every_task_its_output(acdc_labelled):
    cfg, model, tasks = _decomp_model(acdc_labelled)
    out = model(torch.randn(2, 1, 32, 32))
    assert out["presence"].shape == (2, 3) and out["scene"].shape == (2, 5)
    assert out["segmentation"].shape == (2, 4, 32, 32)
    assert out["segmentation/deep1"].shape == (2, 4, 8, 8)  # one deep-supervision level


# ---------------------------------------------------------------- stages
def test_stage_plan_in_steps_epochs_and_fractions():
    stages = [StageConfig(epochs=1), StageConfig(epochs=2), StageConfig()]
    plan = StagePlan(stages, "segmentation", 1e-3, steps_per_epoch=5)
    assert [plan.index(s) for s in (0, 4, 5, 14, 15, 99)] == [0, 0, 1, 1, 2, 2]
    frac = load_config("aspp-decomp").train.stages  # 0.4, 0.3, rest
    plan = StagePlan(frac, "segmentation", 1e-3, progress=lambda step: step / 10)
    assert [plan.index(s) for s in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    names = ["segmentation", "presence", "scene"]
    assert plan.active(0, names, "tasks") == ["segmentation", "presence"]
    assert plan.active(9, names, "tasks") == names
    assert plan.active(0, ["sync"], "terms") == [] and plan.active(5, ["sync"], "terms") == ["sync"]


def _stage_log(out):
    """{global step: (stage, lr, row)} from the training rows, one per step in order (after
    a resume Lightning's own ``step`` column runs one ahead, so it is not used)."""
    rows = [r for r in csv.DictReader((out / "logs" / "metrics.csv").open()) if r["train/stage"]]
    return {i: (float(r["train/stage"]), float(r["train/lr"]), r) for i, r in enumerate(rows)}


def test_stages_switch_at_the_right_step_and_survive_a_resume(acdc_labelled, tmp_path, monkeypatch):
    overrides = [
        *TINY_ASPP,
        *SMALL_HEADS,
        "tasks.scene.params.hidden=8",
        f"data.path={acdc_labelled}",
        "train.stages=[{steps: 1, tasks: [segmentation, presence], terms: []},"
        " {steps: 2, tasks: [segmentation, presence]}, {lr: 1.0e-4}]",
        "train.scheduler=constant",
        "train.warmup=0",
        "train.log_every=1",
        "train.val_every=3",
        "train.max_steps=5",
    ]
    out = tmp_path / "run"
    cfg = load_config("aspp-decomp", overrides)
    power_cut_at(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, out)
    monkeypatch.undo()
    result = train(cfg, out, resume=True)
    log = _stage_log(out)
    assert {s: v[0] for s, v in log.items()} == {0: 0, 1: 1, 2: 1, 3: 2, 4: 2}
    assert {s: round(v[1], 8) for s, v in log.items()} == {
        0: 1e-3,
        1: 1e-3,
        2: 1e-3,
        3: 1e-4,
        4: 1e-4,
    }
    trained = {
        s: {k for k, x in v[2].items() if k.startswith("train/loss_") and x} for s, v in log.items()
    }
    assert trained[0] == {"train/loss_segmentation", "train/loss_presence"}
    assert trained[1] == trained[0] | {"train/loss_sync"}
    assert trained[4] == trained[1] | {"train/loss_scene"}
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == 5


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_paper003_recipe_trains_resumes_and_predicts(recipe, acdc_labelled, tmp_path):
    extra = [*TINY_ASPP, f"data.path={acdc_labelled}", "train.val_every=2"]
    cfg = load_config(recipe, extra)
    names = [t.name for t in cfg.tasks]
    extra += [f"tasks.{n}.params.hidden=8" for n in names[1:]]
    out = tmp_path / "run"
    train(load_config(recipe, [*extra, "train.max_steps=2"]), out)
    result = train(load_config(recipe, [*extra, "train.max_steps=4"]), out, resume=True)
    assert torch.load(result.last_checkpoint, weights_only=True)["global_step"] == 4
    metrics = evaluate(result.best_checkpoint, str(acdc_labelled), "val")
    logged = validation_of(result.best_checkpoint)  # a re-evaluation reproduces validation
    assert metrics["dice/mean"] == pytest.approx(logged["val/dice"], abs=1e-6)
    if "presence" in names:
        assert metrics["task/presence/accuracy"] == pytest.approx(
            logged["val/presence/accuracy"], abs=1e-6
        )
    if "scene" in names:
        assert "task/scene/recall/DCM" in metrics
    source = sorted((acdc_labelled / "imagesTr").iterdir())[0]
    written = predict(result.best_checkpoint, source, tmp_path / "pred")
    assert len(written) == 1 and written[0].is_file()


# ---------------------------------------------------------------- weighting over stages
def test_history_weighting_restarts_when_a_stage_changes_the_losses():
    w = build_weighting("dwa", {"unit": "step"}, {"seg": 1.0, "cls": 1.0, "sync": 1.0}, "seg")
    for step, (a, b) in enumerate([(4.0, 2.0), (2.0, 2.0), (1.0, 2.0)]):
        w.weights({"seg": torch.tensor(a), "cls": torch.tensor(b)}, step)
    assert set(w.weights({"seg": torch.tensor(1.0), "cls": torch.tensor(1.0)}, 3)) == {"seg", "cls"}
    assert w.weights({"seg": torch.tensor(1.0), "cls": torch.tensor(1.0)}, 3)["seg"] != 1.0
    three = {"seg": torch.tensor(1.0), "cls": torch.tensor(1.0), "sync": torch.tensor(3.0)}
    assert w.weights(three, 4) == {"seg": 1.0, "cls": 1.0, "sync": 1.0}  # history restarted
    state = w.state_dict()
    assert state["active"].tolist() == [True, True, True]
    del state["active"]  # a checkpoint from before staged training loads, all losses active
    fresh = build_weighting("dwa", {"unit": "step"}, {"seg": 1.0, "cls": 1.0, "sync": 1.0}, "seg")
    fresh.load_state_dict(state)
    assert fresh.names == ["seg", "cls", "sync"]


# ---------------------------------------------------------------- bad input
def test_a_stage_naming_an_unknown_task_or_term_is_refused():
    with pytest.raises(ConfigError, match=r"train.stages.0.tasks: unknown task 'scnee'"):
        load_config("aspp-decomp", ["train.stages.0.tasks=[segmentation, scnee]"])
    with pytest.raises(ConfigError, match=r"train.stages.1.terms: unknown term 'synk'"):
        load_config("aspp-decomp", ["train.stages.1.terms=[synk]"])
    with pytest.raises(ConfigError, match=r"train.stages.0: only the last stage"):
        load_config("aspp-decomp", ["train.stages.0.fraction=null"])
    with pytest.raises(ConfigError, match=r"train.stages: give every stage's length in one unit"):
        load_config("aspp-decomp", ["train.stages.0.fraction=null", "train.stages.0.steps=3"])
    with pytest.raises(ConfigError, match=r"last stage would start at step 30"):
        load_config(
            "aspp-class-sync",
            ["train.stages.0.fraction=null", "train.stages.0.steps=30", "train.max_steps=20"],
        )


def test_a_sync_term_without_a_presence_task_is_refused():
    cfg = load_config(
        "aspp-class-sync", [*TINY_ASPP, "tasks.presence.enabled=false", "train.stages=[]"]
    )
    _, tasks = build_model_and_tasks(cfg, 1, 4)
    with pytest.raises(ConfigError, match=r"terms.sync: no task named 'presence'"):
        build_terms(cfg.terms, tasks)
    cfg.terms[0].params.presence = "segmentation"
    with pytest.raises(ConfigError, match=r"'segmentation' is a segmentation task, expected"):
        build_terms(cfg.terms, tasks)


def test_a_missing_scene_label_is_named(acdc_labelled):
    from mtlseg.engine.data import prepare_data
    from mtlseg.engine.train import build_module

    csv_path = acdc_labelled / "case_labels.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines[:-1]) + "\n")
    cfg = load_config("aspp-decomp", [*TINY_ASPP, f"data.path={acdc_labelled}"])
    with pytest.raises(DataError, match=r"case_labels.csv: 1 case\(s\) have no 'pathology' label"):
        build_module(cfg, prepare_data(cfg.data))
