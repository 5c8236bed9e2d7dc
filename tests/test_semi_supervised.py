"""Semi-supervised terms (issue 21): the EMA teacher and the mean-teacher consistency."""

from __future__ import annotations

import math

import pytest
import torch

from mtlseg.engine.data import prepare_data
from mtlseg.engine.inference import load_module
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.step import Optimisation
from mtlseg.engine.train import loaders, train
from mtlseg.errors import ConfigError
from mtlseg.settings import load_config
from mtlseg.terms.mean_teacher import sigmoid_rampup
from tests.conftest import TINY_UNET

CLASSES = ["background", "foreground"]
# the recipe's SSL4MIS dropout has a rate per level of its 5-level UNet; the tiny one has 3
TINY_MT = [*TINY_UNET, "model.params.dropout=[0.05,0.1,0.2]"]


def _module(*extra: str) -> MultiTaskModule:
    torch.manual_seed(0)
    cfg = load_config("unet-mean-teacher", [*TINY_MT, *extra])
    return MultiTaskModule(cfg.to_dict(), 3, CLASSES).train()


def _batch(n: int = 4, labelled: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 32, 32, dtype=torch.long)
    mask[:, 8:20, 8:20] = 1
    return {
        "image": torch.rand(n, 3, 32, 32, generator=g),
        "mask": mask,
        "labelled": torch.tensor([True] * labelled + [False] * (n - labelled)),
    }


def test_the_teacher_is_torchs_ema_of_the_student_with_the_mean_teacher_ramp():
    module = _module()
    opt = torch.optim.SGD(module.model.parameters(), lr=0.5)
    teacher = dict(module.teacher.module.named_parameters())
    name = "backbone.out.conv.conv.weight"
    seen = []
    for step in range(3):
        module.train_step(_batch(), step, Optimisation(opt))
        seen.append(dict(module.model.named_parameters())[name].detach().clone())
    # update n (from 0): a copy first, then a = min(1 - 1/(n + 1), 0.99): 1/2, 2/3
    expected = seen[0]
    for n, student in ((1, seen[1]), (2, seen[2])):
        a = min(1 - 1 / (n + 1), 0.99)
        expected = a * expected + (1 - a) * student
    assert torch.allclose(teacher[name], expected, atol=1e-6)
    assert not any(p.requires_grad for p in module.teacher.parameters())


def test_the_consistency_is_zero_when_teacher_and_student_agree_and_trains_the_student_only():
    module = _module("terms.0.params.noise=0.0")
    batch = _batch()
    module.teacher.follow(module.model)  # the first update copies the student
    module.eval()  # batch norm on running statistics: teacher and student compute alike
    ctx = module.train_step.term_context(0)
    ctx.progress = 1.0  # past the ramp-up: weight 1
    (term,) = module.terms
    outputs = module.model(batch["image"])
    assert term(outputs, batch, ctx).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():  # the student moves away
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    outputs = module.model(batch["image"])
    loss = term(outputs, batch, ctx)
    pool = ~batch["labelled"]  # by hand: the MSE of the two softmaxes on the pool's rows
    with torch.no_grad():
        teacher = module.teacher.module(batch["image"][pool])["segmentation"].softmax(1)
    student = outputs["segmentation"][pool].detach().softmax(1)
    expected = ((student - teacher) ** 2).mean().item()
    assert expected > 1e-6 and loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.any() for p in module.model.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())
    # on the unlabelled rows only: all-labelled batches give nothing to match
    labelled = {**batch, "labelled": torch.ones(4, dtype=torch.bool)}
    assert term(module.model(batch["image"]), labelled, ctx).item() == 0.0


def test_the_teachers_noise_is_a_share_of_each_cases_intensity_range():
    """SSL4MIS's sigma 0.1 (clipped at 0.2) on [0, 1]-scaled images: the same draw, scaled
    by each row's case range, whatever the normalisation."""
    module = _module()
    (term,) = module.terms
    seen = []

    def teacher(x, meta=None):
        seen.append(x)
        return module.model(x)

    batch = {**_batch(), "intensity_range": torch.tensor([1.0, 1.0, 2.0, 8.0])}
    outputs = module.model(batch["image"])
    for ranges in (torch.tensor([1.0, 1.0, 1.0, 1.0]), batch["intensity_range"]):
        ctx = module.train_step.term_context(0)  # the same step: the same draw of noise
        ctx.teacher = teacher
        term(outputs, {**batch, "intensity_range": ranges}, ctx)
    pool = batch["image"][~batch["labelled"]]
    unit, scaled = seen[0] - pool, seen[1] - pool
    assert torch.allclose(scaled, unit * torch.tensor([2.0, 8.0]).view(2, 1, 1, 1), atol=1e-6)
    assert unit.abs().max() <= 0.2 + 1e-6 and unit.std() == pytest.approx(0.088, abs=0.01)


def test_the_ramp_up_is_laine_and_ailas_sigmoid():
    assert sigmoid_rampup(0.0, 0.4) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(0.2, 0.4) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(0.4, 0.4) == 1.0 and sigmoid_rampup(0.9, 0.4) == 1.0


def test_mean_teacher_trains_on_the_pool_resumes_and_predicts_with_the_chosen_network(
    kvasir_small, tmp_path, caplog
):
    sets = [*TINY_MT, f"data.path={kvasir_small}", "data.label_budget=4"]
    sets += ["train.val_every=2", "data.num_workers=0"]
    cfg = load_config("unet-mean-teacher", [*sets, "train.max_steps=2"])
    data = prepare_data(cfg.data)
    batch = next(iter(loaders(cfg, data)[0]))
    assert batch["labelled"].sum() == 4 and (~batch["labelled"]).sum() == 4
    out = tmp_path / "run"
    train(cfg, out)
    result = train(load_config("unet-mean-teacher", [*sets, "train.max_steps=4"]), out, resume=True)
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert any(k.startswith("teacher.") for k in state), "the teacher is checkpointed"
    student = load_module(result.last_checkpoint)
    assert student.predictor is student.model
    cfg_t = load_config("unet-mean-teacher", [*sets, "model.predict_with=teacher"])
    teacher_run = MultiTaskModule(cfg_t.to_dict(), 3, data.class_names)
    teacher_run.load_state_dict(student.state_dict())
    assert teacher_run.predictor is teacher_run.teacher.module
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(teacher_run.eval().segment(x), student.eval().segment(x))
    # a semi-supervised recipe without a pool says so and trains labelled-only
    with caplog.at_level("WARNING"):
        train(
            load_config(
                "unet-mean-teacher", [*TINY_MT, f"data.path={kvasir_small}", "train.max_steps=1"]
            ),
            tmp_path / "alone",
        )
    assert "learn(s) from the unlabelled pool only, and there is none" in caplog.text


def test_dtc_is_the_squared_gap_between_the_segmentation_and_the_distances_implied_one():
    from mtlseg.engine.module import build_model_and_tasks
    from mtlseg.terms import TermContext, build_terms

    cfg = load_config("unet-dtc", [*TINY_UNET])
    _, tasks = build_model_and_tasks(cfg, 1, 2)
    (dtc,) = build_terms(cfg.terms, tasks)
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1] = torch.tensor([[4.0, -4.0], [0.0, 2.0]])  # foreground probabilities
    distance = torch.tensor([[[[-0.2, 0.3], [0.0, -0.01]]]])  # negative inside
    out = {
        "segmentation": logits.clone().requires_grad_(),
        "distance": distance.clone().requires_grad_(),
    }
    p = logits.softmax(1)[0, 1]
    implied = torch.sigmoid(-1500.0 * distance[0, 0])
    expected = ((implied - p) ** 2).mean()
    done = TermContext(progress=1.0)  # past the ramp-up
    loss = dtc(out, {}, done)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    # both heads get the gradient of the squared gap, by hand: d/dd and d/dp of
    # mean((T(d) - p)^2) over the 4 pixels (p = the softmax's foreground channel)
    gap = (implied - p) / 4 * 2
    assert torch.allclose(out["distance"].grad[0, 0], gap * -1500.0 * implied * (1 - implied))
    dp = -gap  # through the two-class softmax: dp/dz1 = p(1-p) = -dp/dz0
    assert torch.allclose(out["segmentation"].grad[0, 1], dp * p * (1 - p), atol=1e-7)
    assert torch.allclose(out["segmentation"].grad[0, 0], -dp * p * (1 - p), atol=1e-7)
    early = dtc(out, {}, TermContext(progress=0.0))
    assert early.item() == pytest.approx(math.exp(-5) * expected.item(), rel=1e-6)


def test_dtcs_distance_head_is_one_1x1_conv_on_the_last_decoder_stage():
    """unet-dtc's distance head is the authors' output layer: a 1x1 conv of the full-size
    decoder feature, nothing between (``hidden: 0``)."""
    from mtlseg.engine.module import build_model_and_tasks

    cfg = load_config("unet-dtc", [*TINY_UNET])
    model, _ = build_model_and_tasks(cfg, 1, 4)
    head = model.heads["distance"]
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (1, 1)
    feature = torch.randn(2, convs[0].in_channels, 32, 32)
    expected = torch.nn.functional.conv2d(feature, convs[0].weight, convs[0].bias)
    assert torch.allclose(head({head.feature: feature}), expected, atol=1e-6)
    with pytest.raises(ConfigError, match="tasks.distance.params: hidden must be >= 0"):
        load_config("unet-dtc", [*TINY_UNET, "tasks.1.params.hidden=-1"])  # at load


# --- bidirectional copy-paste (Bai et al. 2023) --------------------------------------------


def _bcp(*extra: str):
    from mtlseg.engine.module import build_model_and_tasks
    from mtlseg.terms import build_terms

    cfg = load_config("unet-bcp", [*TINY_UNET, *extra])
    _, tasks = build_model_and_tasks(cfg, 1, 2)
    pretrain, selftrain = build_terms(cfg.terms, tasks)
    return pretrain, selftrain


def _masked_dice_ce(logits, target, region):
    """SSL4MIS's masked Dice (mean over classes, background included) and masked CE, by
    hand with numpy."""
    import numpy as np

    lg = logits.double().numpy()
    p = np.exp(lg) / np.exp(lg).sum(1, keepdims=True)
    t, r = target.numpy(), np.broadcast_to(region.numpy(), t_shape := target.shape)
    dice = 0.0
    for c in range(lg.shape[1]):
        y = (t == c).astype(float)
        inter = (p[:, c] * y * r).sum()
        dice += 1 - (2 * inter + 1e-10) / ((p[:, c] ** 2 * r).sum() + (y * r).sum() + 1e-10)
    dice /= lg.shape[1]
    nll = -np.log(np.take_along_axis(p, t[:, None], 1)[:, 0])
    ce = (nll * r).sum() / r.sum()
    assert r.shape == t_shape
    return dice, ce


def test_bcp_region_loss_is_ssl4mis_masked_dice_and_masked_ce():
    from mtlseg.terms.bcp import RegionLoss

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)
    region = torch.zeros(5, 5)
    region[1:4, :3] = 1
    dice, ce = RegionLoss(None)(logits, target, region)
    want_dice, want_ce = _masked_dice_ce(logits, target, region)
    assert dice.item() == pytest.approx(want_dice, rel=1e-5)
    assert ce.item() == pytest.approx(want_ce, rel=1e-5)
    # an ignored class drops out of the region
    ignored = RegionLoss(2)(logits, target, region)
    keep = region * (target != 2)
    want = _masked_dice_ce(logits, torch.where(target == 2, 0, target), keep)
    assert ignored[1].item() == pytest.approx(want[1], rel=1e-5)


def test_bcp_box_mask_is_one_box_of_two_thirds_the_side():
    from mtlseg.terms.bcp import box_mask

    m = box_mask(12, 9, 2 / 3, torch.device("cpu"), torch.Generator().manual_seed(3))
    zeros = (m == 0).nonzero()
    assert len(zeros) == 8 * 6
    rows, cols = zeros[:, 0], zeros[:, 1]
    assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 5  # one rectangle
    assert set(m.unique().tolist()) == {0.0, 1.0}


class _Recorder:
    """A network stand-in: records its inputs, answers fixed logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits, self.inputs = logits, []

    def __call__(self, x, meta=None):
        self.inputs.append(x.clone())
        return {"segmentation": self.logits[: x.shape[0]].clone().requires_grad_()}


def test_bcp_mixes_labelled_and_pool_images_both_ways_and_weights_the_pseudo_labels():
    from mtlseg.terms import TermContext

    _, term = _bcp("terms.1.params.largest_component=false", "terms.1.params.box=0.5")
    h = w = 6
    x = torch.arange(4.0)[:, None, None, None].expand(4, 1, h, w).clone()  # image i == i
    mask = torch.zeros(4, h, w, dtype=torch.long)
    mask[0] = 1  # labelled a: all foreground, labelled b: all background
    batch = {"image": x, "mask": mask, "labelled": torch.tensor([True, True, False, False])}
    g = torch.Generator().manual_seed(5)
    student = _Recorder(torch.randn(2, 2, h, w, generator=g))
    teacher = _Recorder(torch.zeros(1, 2, h, w))
    teacher.logits[0, 1] = 5.0  # u_a: foreground everywhere ...
    seen = teacher.__call__

    def teacher_fn(x, meta=None):  # ... u_b (image value 3): background
        out = seen(x, meta)
        return {"segmentation": -out["segmentation"]} if x[0, 0, 0, 0] == 3 else out

    ctx = TermContext(student=student, teacher=teacher_fn, generator=torch.Generator())
    loss = term({}, batch, ctx)
    from mtlseg.terms.bcp import box_mask

    m = box_mask(h, w, 0.5, torch.device("cpu"), torch.Generator())
    outward, inward = student.inputs
    # outward: the pool's u_a (value 2) outside the box, labelled a (value 0) inside
    assert torch.equal(outward[0, 0], torch.where(m.bool(), 2.0, 0.0))
    # inward: labelled b (value 1) outside, the pool's u_b (value 3) inside
    assert torch.equal(inward[0, 0], torch.where(m.bool(), 1.0, 3.0))
    assert [t[0, 0, 0, 0].item() for t in teacher.inputs] == [2.0, 3.0]
    lg = student.logits[:1]
    ones, zeros = torch.ones(1, h, w, dtype=torch.long), torch.zeros(1, h, w, dtype=torch.long)
    parts = [
        (ones, m, 0.5),  # u_a's pseudo-label (fg) outside, alpha
        (ones, 1 - m, 1.0),  # a's mask (fg) inside
        (zeros, m, 1.0),  # b's mask (bg) outside
        (zeros, 1 - m, 0.5),  # u_b's pseudo-label (bg) inside, alpha
    ]
    want = sum(wt * sum(_masked_dice_ce(lg, t, r)) for t, r, wt in parts) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_bcp_pseudo_labels_keep_the_largest_component_of_each_class():
    _, term = _bcp()
    logits = torch.zeros(1, 2, 8, 8)
    logits[0, 1, 0:2, 0:2] = 5.0  # a small blob
    logits[0, 1, 4:8, 3:8] = 5.0  # the large one
    labels = term.pseudo_labels(lambda x, meta: {"segmentation": logits}, torch.zeros(1), None)
    want = torch.zeros(1, 8, 8, dtype=torch.long)
    want[0, 4:8, 3:8] = 1
    assert torch.equal(labels, want)


def test_bcp_pretrains_then_self_trains_from_the_pretrained_student_as_teacher():
    stages = "[{steps: 2, terms: [bcp-pretrain]}, {terms: [bcp], reset_teacher: true}]"
    sets = [*TINY_UNET, f"train.stages={stages}"]
    torch.manual_seed(0)
    cfg = load_config("unet-bcp", sets)
    module = MultiTaskModule(cfg.to_dict(), 3, CLASSES).train()
    opt = torch.optim.SGD(module.model.parameters(), lr=0.1)
    assert module.seg_task.name in module.terms[0].replaces
    out = module.train_step(_batch(6, 4), 0, Optimisation(opt))
    assert set(out.losses) == {"bcp-pretrain"}, "the segmentation's own loss is not computed"
    module.train_step(_batch(6, 4), 1, Optimisation(opt))
    student = {k: v.clone() for k, v in module.model.state_dict().items()}
    module.train_step.enter_stage(2)  # the self-training stage starts: the teacher is the student
    for k, v in module.teacher.module.state_dict().items():
        assert torch.equal(v, student[k]), k
    out = module.train_step(_batch(6, 4), 2, Optimisation(opt))
    assert set(out.losses) == {"bcp"}
    name = "backbone.out.conv.conv.weight"
    after = dict(module.model.named_parameters())[name].detach()
    # a fixed decay from the pre-trained copy: 0.99 teacher + 0.01 student
    want = 0.99 * student[name] + 0.01 * after
    assert torch.allclose(dict(module.teacher.module.named_parameters())[name], want, atol=1e-6)
    module.train_step.enter_stage(3)  # within a stage: no reset
    assert not torch.equal(dict(module.teacher.module.named_parameters())[name], after)


def test_bcp_trains_resumes_exactly_and_without_a_pool_trains_labelled_only(
    kvasir_small, tmp_path, caplog
):
    from mtlseg.engine.checkpoint import load_checkpoint

    sets = [*TINY_UNET, f"data.path={kvasir_small}", "data.label_budget=4"]
    sets += ["train.val_every=2", "data.num_workers=0", "train.scheduler=step", "train.warmup=0"]
    # stages in steps (a fraction would move with the shortened plan of the cut run); the
    # cut falls within the self-training stage
    stages = "[{steps: 2, terms: [bcp-pretrain]}, {terms: [bcp], reset_teacher: true}]"
    sets += ["data.val_fraction=0.25", f"train.stages={stages}"]
    full = train(load_config("unet-bcp", [*sets, "train.max_steps=5"]), tmp_path / "full")
    train(load_config("unet-bcp", [*sets, "train.max_steps=3"]), tmp_path / "split")
    half = train(load_config("unet-bcp", [*sets, "train.max_steps=5"]), tmp_path / "split", True)
    a = load_checkpoint(full.last_checkpoint)["state_dict"]
    b = load_checkpoint(half.last_checkpoint)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-5), key
    # no pool (every label kept: the top of a label-budget sweep): a warning, then the
    # self-training stage mixes labelled images only, as the pre-training does
    no_pool = [*sets, "data.label_budget=all", "train.max_steps=3"]
    with caplog.at_level("WARNING"):
        run = train(load_config("unet-bcp", no_pool), tmp_path / "x")
    assert "terms.bcp mix(es) labelled images with the unlabelled pool's, and there is none" in (
        caplog.text
    )
    assert load_checkpoint(run.last_checkpoint)["global_step"] == 3  # past the pre-training
    with pytest.raises(ConfigError, match="weighting 'gcs' needs the 'segmentation' loss"):
        gcs = load_config("unet-bcp", [*TINY_UNET, "weighting.kind=gcs"])
        MultiTaskModule(gcs.to_dict(), 3, CLASSES)


def test_separate_pool_forward_keeps_batch_norm_to_each_group_and_the_batch_order():
    """``train.pool_forward: separate``: in train mode the labelled rows' outputs are those
    of a batch of the labelled rows alone (batch norm never sees the pool with them), the
    pool's those of the pool alone, each put back at its row; ``joint`` normalises all rows
    together, so its labelled outputs differ."""
    module = _module("model.params.dropout=null")  # separate is the default; no dropout draws
    batch = _batch(n=6)
    batch["labelled"] = torch.tensor([False, True, False, True, True, False])
    rows = batch["labelled"]
    x = batch["image"]
    outputs, _ = module.train_step.pool_forward(module.model, x, batch)
    seg = module.seg_task.name
    alone_labelled, _ = module.model.forward_with_features(x[rows])
    alone_pool, _ = module.model.forward_with_features(x[~rows])
    assert torch.allclose(outputs[seg][rows], alone_labelled[seg], atol=1e-6)
    assert torch.allclose(outputs[seg][~rows], alone_pool[seg], atol=1e-6)
    joint = _module("train.pool_forward=joint", "model.params.dropout=null")
    joint_out, _ = joint.train_step.pool_forward(joint.model, x, batch)
    assert not torch.allclose(joint_out[seg][rows], alone_labelled[seg], atol=1e-3)
    # a loss through the merged outputs reaches every parameter group as a joint one does
    out = module.train_step.losses(batch, 0)
    module.train_step.backward(out)
    assert all(p.grad is not None for p in module.model.backbone.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="train.pool_forward: expected joint or separate"):
        load_config("unet-mean-teacher", ["train.pool_forward=apart"])
