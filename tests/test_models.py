"""Contract tests generated from the backbone registry, plus the HOG regression unit."""

import pytest
import torch

from mtlseg.engine.module import build_model_and_tasks
from mtlseg.errors import ConfigError
from mtlseg.models import BACKBONES, build_backbone
from mtlseg.models.heads import RegressionUnit
from mtlseg.models.registry import TINY_PARAMS
from mtlseg.settings import load_config

TINY = TINY_PARAMS  # each backbone's small instance, declared where it is registered


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("size", [32, 40])
def test_backbone_contract(name, size):
    torch.manual_seed(0)
    model = build_backbone(name, TINY[name], 3, 4, task_names=["segmentation", "aux"])
    spatial = (size, size, 4)[: model.spatial_dims]  # 3D: a volume of 4 slices
    logits, features = model(torch.randn(2, 3, *spatial))
    assert logits.shape == (2, 4, *spatial) and torch.isfinite(logits).all()
    views = [model.task_features(features, task) for task in ("segmentation", "aux")]
    if model.per_task:  # each task reads its own encoder features, the decoder is shared
        assert views[0]["encoder1"] is not views[1]["encoder1"]
    for view in views:
        assert set(view) == set(model.feature_info)
        assert "bottleneck" in view and any(k.startswith("decoder") for k in view)
        for key, feat in view.items():
            info = model.feature_info[key]
            assert feat.shape[1] == info.channels and feat.shape[2] == -(-size // info.stride)
    (logits.mean() + sum(f.mean() for f in features.values())).backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter gets a gradient"


def test_regression_unit_follows_table_1():
    unit = RegressionUnit(c_in=16, in_size=8, out_dim=512, hidden=12)
    convs = [m for m in unit.convs if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in unit.convs if isinstance(m, torch.nn.MaxPool2d)]
    assert len(convs) == 2 and all(c.kernel_size == (3, 3) for c in convs) and len(pools) == 2
    assert unit.linear.in_features == 12 * 2 * 2 and unit.linear.out_features == 512
    assert unit(torch.randn(5, 16, 8, 8)).shape == (5, 512)


def test_shallow_stages_are_pooled_to_the_grid():
    unit = RegressionUnit(c_in=4, in_size=128, out_dim=64, hidden=8, max_grid=8)
    assert unit.linear.in_features == 8 * 8 * 8
    assert unit(torch.randn(2, 4, 128, 128)).shape == (2, 64)


@pytest.mark.parametrize(
    "recipe,stages,sizes", [("unet-hog", 1, [32, 16]), ("u2net-hog", 5, [32, 16, 8])]
)
def test_multitask_model_outputs_one_entry_per_task(recipe, stages, sizes):
    params = [f"model.params={TINY[recipe.split('-')[0]]}".replace("'", '"'), "data.image_size=32"]
    cfg = load_config(recipe, params)
    model, tasks = build_model_and_tasks(cfg, in_channels=1, num_classes=3)
    out = model(torch.randn(2, 1, 32, 32))
    # deep supervision (default 2 stages, as many as the tiny decoder has): entries of its own
    deep = [f"segmentation/deep{i}" for i in range(1, len(sizes))]
    assert list(out) == ["segmentation", *deep, "hog"]
    seg = [out[k] for k in ["segmentation", *deep]]
    assert [tuple(o.shape) for o in seg] == [(2, 3, n, n) for n in sizes]
    assert out["hog"].shape == (2, stages, 512)  # batch-first
    batch = {"image": torch.randn(2, 1, 32, 32), "mask": torch.randint(0, 3, (2, 32, 32))}
    losses = {t.name: t.loss(t.output(out), t.target(batch)) for t in tasks}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def _rsu_widths(block) -> tuple[int, int, int]:
    """(in, mid, out) of an RSU / RSU-4F block, read off its convolutions."""
    return (
        block.stem[0].in_channels,
        block.encoder[0][0].out_channels,
        block.stem[0].out_channels,
    )


def test_u2net_at_full_widths_is_the_papers_table_1():
    """Qin et al. 2020, Table 1 (and the authors' U2NET): De_1 is RSU-7(128, 16, 64)."""
    net = build_backbone(
        "u2net",
        {
            "out_channels": [64, 128, 256, 512, 512, 512],
            "mid_channels": [32, 32, 64, 128, 256, 256],
        },
        3,
        1,
    )
    encoder = [
        (3, 32, 64),
        (64, 32, 128),
        (128, 64, 256),
        (256, 128, 512),
        (512, 256, 512),
        (512, 256, 512),
    ]
    decoder = [(128, 16, 64), (256, 32, 64), (512, 64, 128), (1024, 128, 256), (1024, 256, 512)]
    assert [_rsu_widths(b) for b in net.encoder] == encoder
    assert [_rsu_widths(b) for b in net.decoder] == decoder  # De_1 .. De_5
    assert len(net.decoder[0].encoder) == 6  # De_1 is an RSU-7
    # U^2-Net-p (the shipped recipes' widths): every mid is 16, De_1's too
    small = build_backbone("u2net", {}, 3, 1)
    assert _rsu_widths(small.decoder[0]) == (128, 16, 64)


def test_u2net_side_supervision_is_declared_output_entries_and_its_papers_loss():
    params = [
        f"model.params={TINY['u2net']}".replace("'", '"'),
        "model.params.side_supervision=true",
        "data.image_size=32",
        "tasks.0.params.loss=ce",
    ]
    cfg = load_config("u2net-hog", params)
    model, tasks = build_model_and_tasks(cfg, in_channels=1, num_classes=3)
    out = model(torch.randn(2, 1, 32, 32))
    sides = [f"segmentation/side{k}" for k in range(1, 7)]
    assert list(out) == ["segmentation", *sides, "hog"]  # no generic deep supervision
    assert all(out[k].shape == (2, 3, 32, 32) for k in sides)  # upsampled to the input
    assert "segmentation" not in model.heads
    mask = torch.randint(0, 3, (2, 32, 32))
    seg = tasks[0]
    expected = sum(
        torch.nn.functional.cross_entropy(out[k], mask) for k in ["segmentation", *sides]
    )
    assert seg.loss(seg.output(out), mask).item() == pytest.approx(expected.item(), rel=1e-5)
    # inference reads the fused output alone
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(model.eval().segment(x), model(x)["segmentation"])


def test_encoder_dropout_sits_between_each_levels_convs_as_in_ssl4mis():
    """model.params.dropout: one rate per encoder level, applied to the input of the level's
    second conv in training only; the parameters are the plain UNet's."""
    from mtlseg.models.registry import build_backbone

    torch.manual_seed(0)
    rates = [0.5, 0.0, 0.25]
    net = build_backbone("unet", {"channels": [4, 8, 16], "dropout": rates}, 1, 2)
    plain = build_backbone("unet", {"channels": [4, 8, 16]}, 1, 2)
    assert net.state_dict().keys() == plain.state_dict().keys()
    seen: dict[int, torch.Tensor] = {}
    for i, level in enumerate(net.encoder):
        level.conv2.register_forward_pre_hook(lambda m, args, i=i: seen.__setitem__(i, args[0]))
    x = torch.randn(8, 1, 32, 32)
    net.train()(x)
    for i, rate in enumerate(rates):  # LeakyReLU outputs are never exactly 0 otherwise
        assert (seen[i] == 0).float().mean().item() == pytest.approx(rate, abs=0.03)
    net.eval()(x)
    assert all((seen[i] == 0).float().mean().item() < 0.01 for i in range(3))
    for bad, message in (([0.1, 1.0, 0.0], "must be in \\[0, 1\\)"), ([0.1], "one rate per")):
        with pytest.raises(ConfigError, match=f"model.params: dropout: .*{message}"):
            build_backbone("unet", {"channels": [4, 8, 16], "dropout": bad}, 1, 2)


def test_big_unet_dropout_drops_each_encoder_levels_output():
    """One rate per level (the stem, then each stage): the level's output, as the skip and
    the next level's input, keeps each value with probability 1 - p, scaled by 1 / (1 - p)."""
    from mtlseg.models.registry import build_backbone

    x = torch.randn(4, 3, 32, 32)
    for level, rates in ((0, [0.5, 0, 0, 0]), (3, [0, 0, 0, 0.2])):
        torch.manual_seed(0)
        params = {"layers": [1, 1, 1], "width": 4, "dropout": rates}
        net = build_backbone("big-unet", params, 3, 2).train()
        dropped = net._encode(x)
        net.rates = [0.0] * 4
        plain = net._encode(x)  # batch norm in train mode: the same statistics, no dropout
        assert all(torch.equal(dropped[i], plain[i]) for i in range(level))
        alive = plain[level] != 0
        kept = dropped[level][alive] != 0
        assert 1 - kept.float().mean().item() == pytest.approx(rates[level], abs=0.05)
        scale = 1 / (1 - rates[level])
        expected = plain[level][alive][kept] * scale
        assert torch.allclose(dropped[level][alive][kept], expected, atol=1e-5)
