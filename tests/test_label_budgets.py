"""Label budgets and the unlabelled pool (issue 21): which cases keep their masks, the pool's
masks never read, its own seeded stream beside the labelled batches, and the tasks that
learn from it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mtlseg.data.budgets import resolve_label_budget
from mtlseg.engine.data import TwoStreamBatches, prepare_data
from mtlseg.engine.module import MultiTaskModule
from mtlseg.engine.rows import select_rows
from mtlseg.engine.train import loaders, train
from mtlseg.errors import ConfigError, DataError
from mtlseg.settings import load_config
from tests.conftest import ACDC, TINY_UNET, copy_acdc_cases, require_data


def _cfg(recipe: str, data, *extra: str):
    return load_config(recipe, [*TINY_UNET, f"data.path={data}", *extra])


# ---------------------------------------------------------------- the budget
@pytest.mark.parametrize(
    "value, message",
    [
        ("1.0", "1.0 is ambiguous"),  # as a fraction every case, as a count one case
        ("0", "a count must be >= 1"),
        ("1.25", "a fraction must be in"),
        ("true", "expected all, a count"),
    ],
)
def test_a_label_budget_is_a_count_a_fraction_all_or_a_list(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config("unet", [f"data.label_budget={value}"])
    assert load_config("unet", ["data.label_budget=0.25"]).data.label_budget == 0.25
    assert load_config("unet", ["data.label_budget=7"]).data.label_budget == 7


def test_patients_are_labelled_together_and_drawn_by_the_seed(tmp_path):
    train = [f"p{i}_frame01" for i in range(6)] + [f"p{i}_frame02" for i in range(6)]
    patients = {c: c.split("_")[0] for c in train}
    labelled, pool, source = resolve_label_budget(tmp_path, train, patients, 2, "patient", 0)
    assert len(labelled) == 4 and len(pool) == 8  # 2 patients x 2 frames
    assert {patients[c] for c in labelled}.isdisjoint({patients[c] for c in pool})
    assert "seeded draw of 2 patient(s) (data.label_seed 0)" in source
    again = resolve_label_budget(tmp_path, train, patients, 2, "patient", 0)
    other = resolve_label_budget(tmp_path, train, patients, 2, "patient", 1)
    assert again[0] == labelled and other[0] != labelled
    half, _, _ = resolve_label_budget(tmp_path, train, patients, 0.5, "patient", 0)
    assert len({patients[c] for c in half}) == 3  # a fraction of the patients, rounded
    cases, _, _ = resolve_label_budget(tmp_path, train, patients, 3, "case", 0)
    assert len(cases) == 3, "under split_mode case a budget counts cases"
    with pytest.raises(DataError, match="the training split has only 6 patients"):
        resolve_label_budget(tmp_path, train, patients, 7, "patient", 0)
    listed = tmp_path / "mine.json"
    listed.write_text(json.dumps(["p0", "p9"]))
    with pytest.raises(DataError, match=r"mine.json: 1 patient\(s\) of the label budget are not"):
        resolve_label_budget(tmp_path, train, patients, str(listed), "patient", 0)
    (tmp_path / "label_budgets.json").write_text(json.dumps({"2": ["p4", "p77"]}))
    with pytest.raises(DataError, match=r"label_budgets.json \(2 patients\): 1 patient\(s\) of"):
        resolve_label_budget(tmp_path, train, patients, 2, "patient", 0)
    (tmp_path / "label_budgets.json").write_text(json.dumps({"2": ["p4", "p5"]}))
    assert resolve_label_budget(tmp_path, train, patients, 2, "patient", 0)[0] == sorted(
        c for c in train if c.startswith(("p4_", "p5_"))
    )
    with pytest.raises(DataError, match="with data.split_mode=case give"):
        resolve_label_budget(tmp_path, train, patients, 3, "case", 0)


def test_acdc_uses_ssl4mis_budgets_and_the_run_records_the_pool(tmp_path, caplog):
    """ACDC's label_budgets.json lists SSL4MIS's 3 patients: used as is, the other training
    patients become the pool, recorded in the run's splits.json with their source."""
    require_data(ACDC)
    budgets = json.loads((ACDC / "label_budgets.json").read_text())
    three = budgets["3"]
    official = json.loads((ACDC / "splits.json").read_text())
    train_patients = sorted({c.split("_")[0] for c in official["train"]} - set(budgets["14"]))
    pool_patients = train_patients[:2]
    val_patient = sorted({c.split("_")[0] for c in official["val"]})[0]
    root = tmp_path / "acdc"
    cases = [f"{p}_frame0{f}" for p in [*three, *pool_patients, val_patient] for f in (1, 2)]
    copy_acdc_cases(root, cases)
    shutil.copy(ACDC / "label_budgets.json", root)
    val = [f"{val_patient}_frame01", f"{val_patient}_frame02"]
    split = {"train": [c for c in cases if c not in val], "val": val}
    (root / "splits.json").write_text(json.dumps(split))
    cfg = _cfg("unet-hog", root, "data.label_budget=3", "train.max_steps=1")
    with caplog.at_level("WARNING"):
        data = prepare_data(cfg.data)
    assert "in no split" not in caplog.text, "the pool is used, not left out"
    assert {c.split("_")[0] for c in data.split["train"]} == set(three)
    assert {c.split("_")[0] for c in data.split["unlabelled"]} == set(pool_patients)
    assert "label_budgets.json (3 patients)" in data.label_source
    train(cfg, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert record["labelled"] == record["train"] == data.split["train"]
    assert record["unlabelled"] == data.split["unlabelled"]
    assert "label_budgets.json" in record["label_source"]


# ---------------------------------------------------------------- the pool
def _garbage(path) -> None:
    path.write_bytes(b"not an image at all")


def test_the_pools_masks_are_never_read(kvasir_small, tmp_path):
    """Training with the pool's masks as they are, and with them replaced by garbage that
    cannot be decoded, gives the same weights bit for bit."""
    sets = ["data.label_budget=4", "train.max_steps=3", "train.val_every=3", "data.num_workers=0"]
    first = train(_cfg("unet-hog", kvasir_small, *sets), tmp_path / "a")
    pool = json.loads((tmp_path / "a" / "splits.json").read_text())["unlabelled"]
    assert len(pool) >= 4
    for case in pool:
        _garbage(kvasir_small / "masks" / f"{case}.jpg")
    second = train(_cfg("unet-hog", kvasir_small, *sets), tmp_path / "b")
    a = torch.load(first.last_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(second.last_checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DataError, match="unreadable"):  # the garbage is real garbage
        prepare_data(_cfg("unet", kvasir_small).data)


def test_unlabelled_folders_join_the_pool_and_bad_ones_are_named(kvasir_small, tmp_path):
    extra = tmp_path / "more"
    extra.mkdir()
    for img in sorted((kvasir_small / "images").iterdir())[:3]:
        shutil.copy(img, extra / f"x{img.name}")
    data = prepare_data(_cfg("unet", kvasir_small, f"data.unlabelled_dirs=[{extra}]").data)
    assert sorted(data.split["unlabelled"]) == sorted(
        f"more-x{p.stem}" for p in sorted((kvasir_small / "images").iterdir())[:3]
    )
    assert len(data.train.indices(labelled=False)) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: no image files"):
        prepare_data(_cfg("unet", kvasir_small, f"data.unlabelled_dirs=[{empty}]").data)
    with pytest.raises(DataError, match="holds masks"):
        prepare_data(_cfg("unet", kvasir_small, f"data.unlabelled_dirs=[{kvasir_small}]").data)


def test_each_step_draws_labelled_and_pool_samples_from_their_own_streams():
    labelled = torch.utils.data.BatchSampler(range(4), 2, drop_last=True)  # 2 batches/epoch
    sampler = TwoStreamBatches(labelled, [10, 11, 12, 13], [20, 21, 22], 2, seed=0)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
    assert all(len(b) == 4 and all(i < 20 for i in b[:2]) for e in epochs for b in e)
    stream = [i for e in epochs for b in e for i in b[2:]]
    # the pool is one endless sequence of permutations (3 images per lap): it does not
    # restart with the labelled epoch (2 x 2 = 4 pool draws per epoch, not a multiple of 3)
    laps = [sorted(stream[k : k + 3]) for k in range(0, 12, 3)]
    assert laps == [[20, 21, 22]] * 4
    again = TwoStreamBatches(labelled, [10, 11, 12, 13], [20, 21, 22], 2, seed=0)
    again.set_epoch(2)
    assert list(again) == epochs[2], "a resumed epoch draws the same pool samples"


def test_the_pool_feeds_only_the_tasks_that_learn_without_annotation(kvasir_small):
    cfg = _cfg("unet-hog", kvasir_small, "data.label_budget=4")
    data = prepare_data(cfg.data)
    train_dl, _ = loaders(cfg, data)
    batch = next(iter(train_dl))
    assert batch["labelled"].tolist() == [True] * 4 + [False] * 4  # batch 4 + 4 pool images
    module = MultiTaskModule(cfg.to_dict(), data.dataset.in_channels, data.class_names)
    module.eval()  # batch norm on running statistics: rows do not see each other
    both = module.train_step.losses(batch).losses
    labelled_only = module.train_step.losses(select_rows(batch, batch["labelled"])).losses
    # segmentation saw the labelled rows only, HOG (label-free) every row
    assert torch.allclose(both["segmentation"], labelled_only["segmentation"])
    assert not torch.allclose(both["hog"], labelled_only["hog"])
    plain = _cfg("unet", kvasir_small, "data.label_budget=4")
    train_dl, _ = loaders(plain, prepare_data(plain.data))
    assert len(next(iter(train_dl))["image"]) == 4, "nothing learns from the pool: none drawn"


def test_a_label_budget_sweep_draws_the_data_efficiency_curve(kvasir_small, tmp_path, capsys):
    """Paper 000's Fig. 4 as one command: the budgets, with the pool (``null``: the default)
    and without it (``0``); at ``all`` there is no pool, so the two rows train alike."""
    from PIL import Image

    from mtlseg.cli import main

    out = tmp_path / "sweep"
    argv = ["compare", "--recipes", "unet", "unet-hog", "--data", str(kvasir_small), "--seeds", "1"]
    argv += ["--out", str(out), "--label-budgets", "2", "all"]
    argv += ["--grid", "train.unlabelled_batch_size=null,0"]
    for s in (*TINY_UNET, "train.max_steps=2", "train.val_every=2", "data.num_workers=0"):
        argv += ["--set", s]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    train = json.loads((out / "budget-all" / "splits.json").read_text())["train"]
    assert "| unet | 2 labelled: " in printed and f"| {len(train)} labelled: " in printed
    rows = {k: f"unet-hog@train.unlabelled_batch_size={k}" for k in ("null", "0")}
    assert all(f"| {row} | 2 labelled: " in printed for row in rows.values())
    # each cell: the mean, the paired difference against unet at the same budget, a verdict
    line = next(
        x
        for x in (out / "efficiency.md").read_text().splitlines()
        if x.startswith(f"| {rows['0']} |")
    )
    scores = json.loads((out / "budget-2" / "results.json").read_text())["runs"]
    dice = {k: v[0]["last"]["dice/mean"] for k, v in scores.items()}
    assert f"{dice[rows['0']]:.4f}, {dice[rows['0']] - dice['unet']:+.4f}: 1 seed: no test" in line
    run = out / "budget-2" / rows["null"] / "seed0"
    pool = json.loads((run / "splits.json").read_text())
    assert len(pool["labelled"]) == 2 and len(pool["unlabelled"]) == len(train) - 2

    def weights(budget: str, k: str) -> dict:
        ckpt = out / f"budget-{budget}" / rows[k] / "seed0" / "checkpoints" / "last.ckpt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    with_pool, without = weights("2", "null"), weights("2", "0")
    assert any(not torch.equal(with_pool[k], without[k]) for k in with_pool), "pool unused"
    alike = weights("all", "null"), weights("all", "0")
    assert all(torch.equal(alike[0][k], alike[1][k]) for k in alike[0])
    assert Image.open(out / "efficiency.png").size == (720, 480)
