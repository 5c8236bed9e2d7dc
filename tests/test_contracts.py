"""Contract tests generated from the registries (as timm tests every registered model):
every registered task, weighting and term, and where FiLM conditions every backbone (the
backbones' own contract test is in test_models.py), as a tiny instance on a small synthetic
batch. A new registration is covered without editing this file, from what the component
declares (a backbone's ``tiny`` params, a task's ``example`` params and ``Requirements``, a
term's ``example_tasks``). Nothing here reads ../shared/data, so nothing skips."""

from __future__ import annotations

import math

import pytest
import torch

from mtlseg.config import FiLMConfig, RunConfig, build_dataclass
from mtlseg.data.metadata import META_FIELDS
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.step import Optimisation
from mtlseg.models import BACKBONES, MultiTaskModel, build_backbone
from mtlseg.models.film import FiLMGenerator
from mtlseg.models.registry import TINY_PARAMS
from mtlseg.tasks import TASKS
from mtlseg.tasks.base import Requirements
from mtlseg.terms import TERMS
from mtlseg.weighting import WEIGHTINGS

SIZE, BATCH = 32, 4
CLASSES = ["background", "a", "b"]
LABELS = {"grade": ["low", "high"]}  # the example labels column (classification, scene)


def _config(tasks: list[dict], **parts) -> dict:
    """A resolved config dict of the tiny ``unet`` (or ``parts['backbone']``) recipe."""
    backbone = parts.pop("backbone", "unet")
    raw = {
        "model": {
            "backbone": backbone,
            "params": TINY_PARAMS[backbone],
            "input": parts.pop("model_input", "image"),
        },
        "tasks": tasks,
        "terms": parts.pop("terms", []),
        "weighting": {"kind": parts.pop("weighting", "fixed")},
        "data": {"image_size": SIZE},
        "train": {"sampler": parts.pop("sampler", "shuffle")},
    }
    assert not parts, parts
    return build_dataclass(RunConfig, raw).to_dict()


def _requirements(kind: str) -> Requirements:
    cls = TASKS.get(kind)
    return cls.requirements(build_dataclass(cls.Config, cls.example))


def _module(tasks: list[dict], channels: int = 1, **parts) -> MultiTaskModule:
    torch.manual_seed(0)
    cfg = _config(tasks, **parts)
    return MultiTaskModule(cfg, channels, CLASSES, label_values=LABELS).train()


def _batch(channels: int = 1, dense: dict[str, int] | None = None) -> dict:
    """Four 32 px images in two cases of two adjacent slices each (so pair tasks find their
    partners), masks with class a, b, both and neither, every field a task may read."""
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long)
    mask[0, 4:12, 4:12] = 1
    mask[1, 16:28, 10:20] = 2
    mask[2, 2:10, 20:30], mask[2, 18:26, 2:14] = 1, 2
    meta = torch.full((BATCH, len(META_FIELDS)), float("nan"))
    for name, values in {
        "position": [0.0, 1.0, 0.0, 1.0],
        "slice_index": [0, 1, 0, 1],
        "num_slices": [2, 2, 2, 2],
        "phase": [1, 1, 2, 2],
        "height": [32, 32, 40, 40],
        "width": [32, 32, 36, 36],
    }.items():
        meta[:, META_FIELDS.index(name)] = torch.tensor(values, dtype=torch.float)
    return {
        "image": torch.rand(BATCH, channels, SIZE, SIZE, generator=g),
        "mask": mask,
        "case_id": ["c0", "c0", "c1", "c1"],
        "patient_id": ["p0", "p0", "p1", "p1"],
        "slice_index": torch.tensor([0, 1, 0, 1]),
        "position": torch.tensor([0.0, 1.0, 0.0, 1.0]),
        "meta": meta,
        "labels": {"grade": ["low", "high", "low", "high"]},
        "dense": {
            n: torch.rand(BATCH, c, SIZE, SIZE, generator=g) for n, c in (dense or {}).items()
        },
    }


def _grads(params) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None and p.grad.abs().sum() > 0]


# ---------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", [n for n in BACKBONES.names() if n != "unet3d"])
def test_every_2d_backbone_declares_where_film_conditions_it(name):
    """The model applies FiLM at the submodule the backbone names: the output then follows
    the metadata, and a model without FiLM ignores it."""
    torch.manual_seed(0)
    net = build_backbone(name, TINY_PARAMS[name], 1, 3, task_names=["segmentation"])
    film = FiLMGenerator(FiLMConfig(fields=["position"], hidden=8, layers=2), net.film_channels)
    model = MultiTaskModel(net, {}, film=film).eval()
    x, meta = torch.randn(2, 1, SIZE, SIZE), torch.zeros(2, len(META_FIELDS))
    moved = meta.clone()
    moved[:, META_FIELDS.index("position")] = 3.0
    with torch.no_grad():
        assert not torch.allclose(model.segment(x, meta), model.segment(x, moved))
        plain = MultiTaskModel(net, {}).eval()
        assert torch.equal(plain.segment(x, meta), plain.segment(x, moved))


# ---------------------------------------------------------------- tasks
def _task_setup(kind: str):
    req = _requirements(kind)
    cls = TASKS.get(kind)
    tasks = [{"kind": "segmentation"}]
    if kind != "segmentation":
        tasks.append({"kind": kind, "params": dict(cls.example)})
    channels = req.channels or 1
    parts = {"sampler": "pairs"} if req.pairs else {}
    if req.model_input:
        parts["model_input"] = req.model_input
    dense = {req.dense: req.dense_channels} if req.dense else None
    return _module(tasks, channels, **parts), _batch(channels, dense)


@pytest.mark.parametrize("kind", TASKS.names())
def test_every_task_trains_its_own_head_and_the_backbone(kind):
    module, batch = _task_setup(kind)
    out = module.train_step.losses(batch)
    assert all(torch.isfinite(v) for v in out.losses.values()), out.losses
    assert out.losses[kind] > 0
    out.losses[kind].backward()  # this task's loss alone
    assert _grads(module.model.backbone.parameters()), "the shared network learns from it"
    for name, head in module.model.heads.items():
        reached = _grads(head.parameters())
        if name == kind:
            assert len(reached) == len(list(head.parameters())), "its whole head learns"
        elif kind != "segmentation":
            assert not reached, f"the {name} head learns from the {kind} loss"


@pytest.mark.parametrize("kind", TASKS.names())
def test_every_task_scores_and_survives_a_checkpoint(kind):
    module, batch = _task_setup(kind)
    module.train_step.backward(module.train_step.losses(batch))
    module.eval()
    with torch.no_grad():
        module.score_batch(batch)
    scores = module.compute_scores()
    assert 0.0 <= scores["pixel_accuracy"] <= 1.0 and not math.isnan(scores["dice/mean"])
    assert all(math.isfinite(v) for k, v in scores.items() if k.startswith("task/")), scores
    fresh = MultiTaskModule(**module.hparams)
    fresh.load_state_dict(module.state_dict())
    with torch.no_grad():
        a, b = (
            module.model(batch["image"], batch["meta"]),
            fresh.eval().model(batch["image"], batch["meta"]),
        )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- weightings
@pytest.mark.parametrize("kind", WEIGHTINGS.names())
def test_every_weighting_updates_every_network_part_and_keeps_its_state(kind):
    tasks = [{"kind": "segmentation"}, {"kind": "presence", "params": {"hidden": 8}}]
    module = _module(tasks, weighting=kind)
    opt = torch.optim.SGD(module.parameters(), lr=0.01)
    batch = _batch()
    for step in range(3):
        torch.manual_seed(step)  # random weightings (RLW) draw the same in both
        module.train_step(batch, step, Optimisation(opt))
    for part in (module.model.backbone, module.model.heads["presence"]):
        grads = _grads(part.parameters())
        assert grads and all(torch.isfinite(g).all() for g in grads)
    clone = MultiTaskModule(**module.hparams)
    clone.load_state_dict(module.state_dict())
    clone.train()
    for m in (module, clone):
        torch.manual_seed(3)
        m.zero_grad(set_to_none=True)
        m.train_step.backward(m.train_step.losses(batch, 3))
    for (name, p), q in zip(module.named_parameters(), clone.parameters(), strict=True):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name
    assert module.weighting.logs() == pytest.approx(clone.weighting.logs())


@pytest.mark.parametrize("kind", WEIGHTINGS.names())
def test_every_weighting_updates_from_a_forward_under_bf16_autocast(kind):
    """``train.precision: auto`` is bf16-mixed on CPUs with native bf16 (the tests pin it to
    fp32): a weighting must take a forward run under autocast; the step records it."""
    tasks = [{"kind": "segmentation"}, {"kind": "presence", "params": {"hidden": 8}}]
    module = _module(tasks, weighting=kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step = module.train_step.losses(_batch(), 0)
    assert step.autocast and not module.train_step.losses(_batch(), 0).autocast
    module.zero_grad(set_to_none=True)
    module.train_step.backward(step)
    for part in (module.model.backbone, module.model.heads["presence"]):
        grads = _grads(part.parameters())
        assert grads and all(torch.isfinite(g).all() for g in grads), kind


# ---------------------------------------------------------------- terms
@pytest.mark.parametrize("kind", TERMS.names())
def test_every_term_gives_a_finite_loss_and_declares_its_needs(kind):
    cls = TERMS.get(kind)
    tasks = [{"kind": k} for k in cls.example_tasks] or [{"kind": "segmentation"}]
    module = _module(tasks, terms=[{"kind": kind}])
    (term,) = module.terms
    batch = _batch()
    if term.needs.mixes_pool:  # two labelled images and two of the pool
        batch["labelled"] = torch.tensor([True, True, False, False])
    out = module.train_step.losses(batch)
    assert torch.isfinite(out.losses[kind])
    if not term.needs.masks:  # a term that needs no mask runs on an image without one
        outputs = module.model(batch["image"])
        unlabelled = {k: v for k, v in batch.items() if k != "mask"}
        assert torch.isfinite(term(outputs, unlabelled, module.train_step.term_context(0)))


def _term_module(kind: str) -> MultiTaskModule:
    """The term's example tasks, a position head it does not read, two labelled rows and
    two of the pool; the teacher (if any) a copy of the student."""
    cls = TERMS.get(kind)
    tasks = [{"kind": k} for k in cls.example_tasks] or [{"kind": "segmentation"}]
    tasks.append({"kind": "position", "params": {"hidden": 8}})
    module = _module(tasks, terms=[{"kind": kind}])
    if module.teacher is not None:
        module.teacher.follow(module.model)
    return module


def _term_loss(module: MultiTaskModule, batch: dict) -> torch.Tensor:
    torch.manual_seed(3)  # dropout, if any: the same draw for every call
    (term,) = module.terms
    return term(module.model(batch["image"]), batch, module.train_step.term_context(5))


@pytest.mark.parametrize("kind", TERMS.names())
def test_every_term_reads_no_mask_of_a_pool_row(kind):
    module = _term_module(kind)
    batch = {**_batch(), "labelled": torch.tensor([True, True, False, False])}
    other = batch["mask"].clone()
    other[2:] = torch.randint(0, 3, other[2:].shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        given, garbage = _term_loss(module, batch), _term_loss(module, {**batch, "mask": other})
    assert torch.equal(given, garbage), f"{kind} read the mask of a pool row"


@pytest.mark.parametrize("kind", TERMS.names())
def test_every_terms_gradient_reaches_only_the_heads_it_reads(kind):
    module = _term_module(kind)
    (term,) = module.terms
    assert term.reads and set(term.reads) <= {t.name for t in module.tasks}
    batch = {**_batch(), "labelled": torch.tensor([True, True, False, False])}
    module.zero_grad(set_to_none=True)
    loss = _term_loss(module, batch)
    assert float(loss.detach()) != 0.0, f"{kind}: a zero loss shows nothing"
    loss.backward()
    assert "position" in module.model.heads
    for name, head in module.model.heads.items():
        if name not in term.reads:
            assert not _grads(head.parameters()), f"{kind} reached the {name} head"
    assert _grads(module.model.backbone.parameters()), f"{kind} trains nothing shared"
