"""Issue 7: schedules, optimisers, augmentation presets, deep supervision, time budgets."""

import json
import math
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from mtlseg.config import TrainConfig, parse_config
from mtlseg.data.resample import resize_labels
from mtlseg.data.transforms import AUGMENTATIONS, Augment2D
from mtlseg.engine.checkpoint import load_checkpoint
from mtlseg.engine.inference import load_module
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.optimizers import build_optimizer
from mtlseg.engine.schedulers import RunProgress, build_scheduler
from mtlseg.engine.train import train
from mtlseg.errors import ConfigError
from mtlseg.settings import load_config
from tests.conftest import TINY_UNET


def _lrs(cfg: TrainConfig, progress: RunProgress, steps: int) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    sched = build_scheduler(cfg, opt, progress)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_poly_and_cosine_follow_their_formulas_to_zero():
    n = 10
    poly = _lrs(TrainConfig(lr=1.0, scheduler="poly"), RunProgress(n), n + 1)
    assert poly == pytest.approx([(1 - s / n) ** 0.9 for s in range(n + 1)])
    cos = _lrs(TrainConfig(lr=1.0, scheduler="cosine"), RunProgress(n), n + 1)
    assert cos == pytest.approx([0.5 * (1 + math.cos(math.pi * s / n)) for s in range(n + 1)])
    step = _lrs(TrainConfig(lr=1.0, scheduler="step", lr_halve_every=3), RunProgress(n), 7)
    assert step == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_a_stage_may_set_its_own_schedule():
    """BCP's way: the run's poly decay while pre-training (the first 40 %), then a constant
    rate at the stage's own lr; an unknown schedule is refused, naming the stage."""
    from mtlseg.config import StageConfig
    from mtlseg.engine.stages import StagePlan

    stages = [StageConfig(fraction=0.4), StageConfig(scheduler="constant", lr=0.5)]
    progress = RunProgress(10)
    plan = StagePlan(stages, "segmentation", 1.0, progress=progress)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cfg = TrainConfig(lr=1.0, scheduler="poly", warmup=0.0)
    sched = build_scheduler(cfg, opt, progress, plan.lr_factor, plan.schedule)
    lrs = []
    for _ in range(8):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([(1 - s / 10) ** 0.9 for s in range(4)] + [0.5] * 4)
    with pytest.raises(ConfigError, match="train.stages.1.scheduler: unknown schedule 'flat'"):
        StagePlan([StageConfig(fraction=0.4), StageConfig(scheduler="flat")], "s", 1.0)


def test_warmup_rises_linearly_then_hands_over():
    lrs = _lrs(TrainConfig(lr=1.0, scheduler="constant", warmup=0.4), RunProgress(10), 6)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_budget_progress_anneals_by_the_clock():
    clock = {"t": 0.0}
    progress = RunProgress(10**9, budget_s=100.0, elapsed=lambda: clock["t"])
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = build_scheduler(TrainConfig(lr=1.0, scheduler="poly"), opt, progress)
    seen = []
    for t in (10.0, 50.0, 90.0, 120.0):  # steps are nothing next to 1e9: time decides
        clock["t"] = t
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.9**0.9, 0.5**0.9, 0.1**0.9, 0.0])


def test_optimisers_by_name():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(params, TrainConfig(optimizer="sgd", momentum=0.9), 0.01)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    assert sgd.defaults["momentum"] == 0.9
    adamw = build_optimizer(params, TrainConfig(optimizer="adamw", weight_decay=0.1), 1e-3)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.1
    with pytest.raises(ConfigError, match="unknown train.optimizer 'lamb'.*adam, adamw, sgd"):
        build_optimizer(params, TrainConfig(optimizer="lamb"), 1e-3)


# ------------------------------------------------------------------ augmentation
def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(48, 48, dtype=torch.long)
    mask[10:30, 5:20] = 1
    image = mask[None].float().repeat(3, 1, 1) * 2.0 - 1.0  # image edges == mask edges
    return image, mask


@pytest.mark.parametrize("name", ["flips", "mild", "strong"])
def test_presets_keep_image_and_mask_aligned(name):
    aug, (image, mask) = Augment2D(name), _pair()
    torch.manual_seed(0)
    for _ in range(8):
        a_img, a_mask, _ = aug(image, mask)
        assert a_img.shape == image.shape and a_img.dtype == torch.float32
        assert set(a_mask.unique().tolist()) <= {0, 1} and torch.isfinite(a_img).all()
        # the foreground of the mask is where the (noisy, blurred) image is bright
        inside, outside = a_img.mean(0)[a_mask == 1], a_img.mean(0)[a_mask == 0]
        if inside.numel() > 20:
            assert inside.mean() > outside.mean() + 1.0


def test_augmentation_follows_the_torch_seed():
    aug, (image, mask) = Augment2D("strong"), _pair()
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(torch.stack([aug(image, mask)[0] for _ in range(4)]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


class _Constant(Dataset):
    def __init__(self, aug):
        self.aug, self.pair = aug, _pair()

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.aug(*self.pair)[0]


def test_workers_draw_different_augmentations():
    """Forked workers must not replay one random sequence (the copied-generator bug)."""
    torch.manual_seed(0)
    loader = DataLoader(_Constant(Augment2D("strong")), batch_size=1, num_workers=2)
    samples = torch.cat(list(loader))  # in order: worker 0, worker 1, worker 0, ...
    same = [torch.equal(a, b) for a, b in zip(samples[0::2], samples[1::2], strict=True)]
    assert sum(same) <= 1  # a copied generator would make all four pairs equal


def test_unknown_augmentation_lists_the_presets():
    with pytest.raises(ConfigError, match="data.augment: unknown augmentation 'heavy'"):
        load_config("unet", ["data.augment=heavy"])
    assert load_config("unet", ["data.augment=false"]).data.augment == "none"
    assert {"none", "flips", "mild", "strong"} <= set(AUGMENTATIONS.names())


# ------------------------------------------------------------------ deep supervision
def _module(*extra) -> MultiTaskModule:
    cfg = load_config("unet", ["model.params.channels=[4,8,16,16]", *extra])
    return MultiTaskModule(cfg.to_dict(), 1, ["background", "RV", "MYO", "LV"])


def test_deep_supervision_loss_is_the_weighted_sum_over_levels():
    """With the floor-nearest label rule a coarse target is the mask's every 2nd / 4th pixel;
    the default rule's targets are resize_labels' (tests/test_resample.py)."""
    torch.manual_seed(0)
    module = _module(
        "tasks.0.params.deep_supervision=2", "tasks.0.params.loss=ce", "data.label_resize=nearest"
    )
    mask = torch.randint(0, 4, (2, 32, 32))
    image = torch.randn(2, 1, 32, 32)
    out = module.model(image)
    keys = ["segmentation", "segmentation/deep1", "segmentation/deep2"]
    assert [k for k in out if k.startswith("segmentation")] == keys  # a flat dict of tensors
    outputs = [out[k] for k in keys]
    assert [tuple(o.shape[-2:]) for o in outputs] == [(32, 32), (16, 16), (8, 8)]
    expected = sum(
        w
        * torch.nn.functional.cross_entropy(o, mask[:, :: 32 // o.shape[-1], :: 32 // o.shape[-1]])
        for w, o in zip((4 / 7, 2 / 7, 1 / 7), outputs, strict=True)
    )
    got = module.train_step.losses({"image": image, "mask": mask}).losses["segmentation"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # inference reads the full-size logits only, equal to the first output
    assert torch.equal(module.model.segment(image), outputs[0])
    module = _module("tasks.0.params.deep_supervision=2", "tasks.0.params.loss=ce")
    outputs = [module.model(image)[k] for k in keys]
    expected = sum(
        w * torch.nn.functional.cross_entropy(o, resize_labels(mask, o.shape[-2:], "linear"))
        for w, o in zip((4 / 7, 2 / 7, 1 / 7), outputs, strict=True)
    )
    got = module.train_step.losses({"image": image, "mask": mask}).losses["segmentation"]
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_deep_supervision_uses_the_stages_a_shallow_decoder_has():
    outputs = _module("tasks.0.params.deep_supervision=3").model(torch.randn(1, 1, 32, 32))
    assert [tuple(o.shape[-2:]) for o in outputs.values()] == [(32, 32), (16, 16), (8, 8)]
    plain = _module("tasks.0.params.deep_supervision=0").model(torch.randn(1, 1, 32, 32))
    assert list(plain) == ["segmentation"]


def test_checkpoints_keep_the_task_defaults_they_were_trained_with(tmp_path):
    module = _module()  # deep supervision left to its default
    params = module.hparams["config"]["tasks"][0]["params"]
    assert params["deep_supervision"] == 2 and params["loss"] == "dice-ce"
    # a checkpoint written before params were resolved, when no deep supervision was the default
    old = _module("tasks.0.params.deep_supervision=0")
    hparams = {**old.hparams, "config": parse_config("unet", ["model.params.channels=[4,8,16,16]"])}
    hparams["config"] = hparams["config"].to_dict()  # params as the recipe gives them
    assert "deep_supervision" not in hparams["config"]["tasks"][0].get("params", {})
    torch.save({"hyper_parameters": hparams, "state_dict": old.state_dict()}, tmp_path / "a.ckpt")
    loaded = load_module(tmp_path / "a.ckpt")
    image = torch.randn(1, 1, 32, 32)
    assert torch.equal(loaded.model(image)["segmentation"], old.eval().model(image)["segmentation"])


# ------------------------------------------------------------------ budgets, end to end
def test_max_minutes_stops_by_the_clock_and_keeps_the_best(acdc_small, tmp_path):
    cfg = load_config(
        "unet",
        [
            *TINY_UNET,
            f"data.path={acdc_small}",
            "train.max_steps=-1",
            "train.max_minutes=0.05",  # 3 s
            "train.val_every=1000",  # never reached: the stop itself validates
            "train.scheduler=poly",
            "train.warmup=0.1",
            "tasks.0.params.deep_supervision=1",
            "tasks.0.params.loss=dice-ce",
            "model.params.norm=batch",
        ],
    )
    result = train(cfg, tmp_path / "run")  # no step or epoch limit: only the clock stops it
    assert 0 < result.steps < 1000
    assert result.best_checkpoint.name == "best.ckpt" and result.best_val_dice is not None
    assert load_checkpoint(result.last_checkpoint)["global_step"] == result.steps
    assert result.throughput["images_per_s"] > 0
    load_module(result.best_checkpoint)  # reloads with its deep-supervision head


class _Slow(Dataset):
    """Real images but a slow reader: the monitor must see the wait."""

    def __init__(self, delay: float):
        self.delay = delay

    def __len__(self):
        return 64

    def __getitem__(self, i):
        time.sleep(self.delay)
        return {"image": torch.randn(1, 16, 16), "mask": torch.zeros(16, 16, dtype=torch.long)}


def _fit_with_reader_delay(delay: float, tmp_path) -> dict[str, float]:
    import lightning.pytorch as pl

    from mtlseg.engine.callbacks import ThroughputMonitor

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def training_step(self, batch, i):
            return torch.nn.functional.cross_entropy(self.conv(batch["image"]), batch["mask"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monitor = ThroughputMonitor(every=2)
    trainer = pl.Trainer(
        max_steps=8,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), DataLoader(_Slow(delay), batch_size=4))
    totals = monitor.totals()
    assert totals["images_per_s"] == pytest.approx(32 / totals["train_seconds"], rel=1e-6)
    return totals


def test_throughput_monitor_measures_the_data_wait(tmp_path):
    """Bounds that hold however busy the machine is: the wait includes every injected sleep."""
    injected = 8 * 4 * 0.05  # 8 batches of 4 samples, 50 ms each
    slow = _fit_with_reader_delay(0.05, tmp_path / "slow")
    fast = _fit_with_reader_delay(0.0, tmp_path / "fast")
    slow_wait = slow["data_wait_share"] * slow["train_seconds"]
    fast_wait = fast["data_wait_share"] * fast["train_seconds"]
    assert slow_wait >= injected
    assert fast_wait < slow_wait - 0.5 * injected


# ------------------------------------------------------------------ precision: auto
def test_auto_precision_follows_the_cpu_and_a_cached_micro_benchmark(monkeypatch, tmp_path):
    from mtlseg.engine import precision

    monkeypatch.setenv("MTLSEG_CACHE", str(tmp_path))
    monkeypatch.delenv(precision.AUTO_ENV, raising=False)  # the suite pins it (conftest)
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert precision.resolve_precision("auto") == "32"  # no native bf16: not even measured
    assert not precision.cache_file().exists()
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    monkeypatch.setattr(precision, "BF16_ACCURATE", True)  # as benchmarks/precision.py found
    timings = {None: 1.0, precision.torch.bfloat16: 0.5}
    calls = []

    def fake_step_time(dtype, size=64, steps=4):
        calls.append(dtype)
        return timings[dtype]

    monkeypatch.setattr(precision, "step_time", fake_step_time)
    assert precision.resolve_precision("auto") == "bf16-mixed"  # native and 2x faster
    assert precision.resolve_precision("auto") == "bf16-mixed" and len(calls) == 2  # cached
    cached = json.loads(precision.cache_file().read_text())
    assert list(cached.values())[0]["speedup"] == pytest.approx(2.0)
    precision.cache_file().unlink()
    timings[precision.torch.bfloat16] = 0.95  # native but barely faster: fp32
    assert precision.resolve_precision("auto") == "32"
    monkeypatch.setattr(precision, "BF16_ACCURATE", False)
    timings[precision.torch.bfloat16] = 0.1
    assert precision.resolve_precision("auto") == "32", "not as accurate: never chosen"
    assert precision.resolve_precision("bf16-mixed") == "bf16-mixed"  # asked for: kept
    with pytest.raises(ConfigError, match="16-mixed needs a GPU"):
        precision.resolve_precision("16-mixed")
    monkeypatch.setattr(precision, "BF16_ACCURATE", True)
    precision.cache_file().unlink()  # measured afresh: bf16 10x faster
    assert precision.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setenv(precision.AUTO_ENV, "32")  # pinned: fp32 even where bf16 pays
    assert precision.resolve_precision("auto") == "32"
    monkeypatch.setenv(precision.AUTO_ENV, "bf16-mixed")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})  # pinned: not even checked
    assert precision.resolve_precision("auto") == "bf16-mixed"
    monkeypatch.setenv(precision.AUTO_ENV, "16")
    with pytest.raises(ConfigError, match=r"MTLSEG_AUTO_PRECISION='16': use one of 32, bf16"):
        precision.resolve_precision("auto")


def test_the_resolved_precision_is_recorded_and_kept_on_resume(acdc_small, tmp_path, monkeypatch):
    import yaml

    from mtlseg.engine import precision
    from mtlseg.engine.train import with_resolved_precision

    monkeypatch.setattr(precision, "auto_precision", lambda gpu, say=True: "32")
    cfg = load_config("unet", [*TINY_UNET, f"data.path={acdc_small}", "train.max_steps=1"])
    out = tmp_path / "run"
    train(cfg, out)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["precision"] == "32"
    # a run started in bf16-mixed (another machine's auto) resumes in it, whatever auto says
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["train"]["precision"] = "bf16-mixed"
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert with_resolved_precision(cfg, out, resume=True).train.precision == "bf16-mixed"
    assert with_resolved_precision(cfg, out, resume=False).train.precision == "32"


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_precision_on_a_gpu_is_bf16_where_native(monkeypatch, caplog, native, expected):
    """With the GPU mocked (no GPU has run this): bf16-mixed needs no loss scaling where the
    GPU computes bf16, else float16; the reason is logged once."""
    import logging

    from mtlseg.engine import precision

    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision.torch.cuda, "is_bf16_supported", lambda: native)
    monkeypatch.setattr(precision, "_SAID", set())
    with caplog.at_level(logging.INFO, logger="mtlseg.engine.precision"):
        assert precision.resolve_precision("auto") == expected
        assert precision.resolve_precision("auto") == expected
    said = [r.getMessage() for r in caplog.records if "precision: auto is" in r.getMessage()]
    assert len(said) == 1 and ("natively" in said[0]) == native
