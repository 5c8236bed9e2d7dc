"""Studies: run only what is missing, record atomically, pair only within one machine and
code, and say what is wrong with a bad study, record or store."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mtlseg.errors import ConfigError, MtlsegError
from mtlseg.study import runner
from mtlseg.study.pages import update_page
from mtlseg.study.report import build_report, render
from mtlseg.study.runner import StudyDeadline, run_study, todo
from mtlseg.study.spec import Cell, load_study
from mtlseg.study.store import SCHEMA, Record, Store, read_record

TINY = [
    "model.params.channels=[4,8,16]",
    "data.image_size=32",
    "train.batch_size=4",
    "data.augment=none",
    "train.max_minutes=null",
    "train.max_steps=6",
    "train.val_every=3",
    "data.split_mode=case",
]


def _study_file(folder: Path, data: Path, steps: int = 6, **extra) -> Path:
    spec = {
        "name": "tiny",
        "data": str(data),
        "seeds": 2,
        "set": [*TINY, f"train.max_steps={steps}"],
        "variants": [
            {"name": "unet", "recipe": "unet"},
            {"name": "wide", "recipe": "unet", "set": ["model.params.channels=[6,8,16]"]},
        ],
        **extra,
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _records(store: Path) -> list[Path]:
    return sorted(store.rglob("*.json"))


def test_a_study_runs_only_what_is_missing_and_a_resumed_run_records_the_same(
    kvasir_small, tmp_path, monkeypatch
):
    study = load_study(_study_file(tmp_path, kvasir_small))
    store, work = Store(tmp_path / "results", study.name), tmp_path / "work"
    say: list[str] = []
    first = run_study(study, store, work, max_runs=1, say=say.append)
    assert first.trained == ["unet budget all seed 0"] and first.stopped == "max-runs"
    assert len(_records(tmp_path / "results")) == 1

    # the next run stops mid-run at step 3 (as its deadline would): nothing is recorded
    def stop_at_3(self, trainer, module, batch, i):
        if trainer.global_step == 3:
            raise StudyDeadline

    monkeypatch.setattr(runner.Deadline, "on_train_batch_start", stop_at_3)
    second = run_study(study, store, work, max_minutes=60, say=say.append)
    assert second.interrupted == "wide budget all seed 0" and second.trained == []
    assert len(_records(tmp_path / "results")) == 1
    monkeypatch.undo()

    third = run_study(study, store, work, say=say.append)
    assert third.trained == [
        "wide budget all seed 0",
        "unet budget all seed 1",
        "wide budget all seed 1",
    ]
    assert any(line.startswith("run 1/3: resume: wide budget all seed 0") for line in say)
    assert say[-1].startswith("run 3/3: recorded: wide budget all seed 1")
    assert run_study(study, store, work).trained == []  # nothing left

    # the resumed run's record equals an uninterrupted run's (another store and work folder)
    fresh = Store(tmp_path / "fresh", study.name)
    run_study(study, fresh, tmp_path / "work2", max_runs=2)
    cell = Cell(study.variants[1], "all", 0)
    resumed = read_record(next((store.folder / cell.folder).glob("*.json")))
    clean = read_record(next((fresh.folder / cell.folder).glob("*.json")))
    assert resumed.scores == clean.scores and resumed.steps == clean.steps == 6
    assert resumed.curves["val"] == clean.curves["val"]


def test_a_killed_study_leaves_no_record_and_no_partial_file(kvasir_small, tmp_path):
    path = _study_file(tmp_path, kvasir_small, steps=3000)
    command = [sys.executable, "-m", "mtlseg.cli", "study", "run", str(path)]
    command += ["--store", str(tmp_path / "results"), "--work", str(tmp_path / "work")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "work").rglob("last.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((tmp_path / "work").rglob("last.ckpt")), "the run never reached a checkpoint"
    results = tmp_path / "results"
    assert [p for p in results.rglob("*") if p.is_file()] == []


def test_two_study_processes_train_each_cell_once(kvasir_small, tmp_path):
    path = _study_file(tmp_path, kvasir_small)
    command = [sys.executable, "-m", "mtlseg.cli", "study", "run", str(path)]
    command += ["--store", str(tmp_path / "results"), "--work", str(tmp_path / "work")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    recorded = [line for out in outputs for line in out.splitlines() if "recorded: " in line]
    assert len(recorded) == 4 and len(set(recorded)) == 4, outputs
    assert len(_records(tmp_path / "results")) == 4


def _fake(study, variant: int, seed: int, machine: str, numerics: str, dice: float) -> Record:
    cell = Cell(study.variants[variant], "all", seed)
    summary = {"dice/mean": dice, "dice/foreground": dice, "hd95/mean": 10.0}
    return Record(
        study=study.name,
        variant=cell.variant.name,
        cell=cell.key,
        budget="all",
        seed=seed,
        config=cell.config.to_dict(),
        machine={"device": "cpu", "cpu": machine, "id": machine},
        numerics=numerics,
        scores={"last": {"summary": summary, "cases": []}, "best": {"summary": summary}},
    )


def test_pairs_never_cross_machines_or_code(kvasir_small, tmp_path):
    study = load_study(_study_file(tmp_path, kvasir_small))
    store = Store(tmp_path / "results", study.name)
    for variant, seed, machine, numerics, dice in [
        (0, 0, "A", "n1", 0.50),
        (1, 0, "A", "n1", 0.60),
        (1, 1, "A", "n1", 0.90),  # its baseline seed 1 is on B, or on A with other code
        (0, 1, "B", "n1", 0.40),
        (0, 0, "B", "n1", 0.55),
        (1, 0, "B", "n1", 0.70),
        (0, 1, "A", "n2", 0.45),
    ]:
        record = _fake(study, variant, seed, machine, numerics, dice)
        store.write(record, Cell(study.variants[variant], "all", seed).folder)
    # seed 1 on machine D, both cells, but of two copies of the data: no pair either
    for variant, data in ((0, "copy-a"), (1, "copy-b")):
        record = _fake(study, variant, 1, "D", "n1", 0.3)
        record.data = {"id": data}
        store.write(record, Cell(study.variants[variant], "all", 1).folder)
    report = build_report(study, store.records())
    base, wide = report.rows
    assert sorted(base.scores) == [0, 1] and base.n == 2
    # seed 0: +0.10 on A, +0.15 on B, averaged; seed 1 has no pair on one machine and code
    assert wide.diffs == pytest.approx({0: 0.125}) and wide.n == 1 and wide.exploratory
    assert wide.missing == [1] and report.missing_cells() == ["wide budget all seed 1"]
    assert wide.unpaired == pytest.approx({0: 0.65, 1: (0.90 + 0.3) / 2})
    text = render(report)
    assert "| all | wide | 1 of 2, exploratory | 0.6500 | +0.1250 |" in text
    assert wide.diffs.keys() == {0}  # a pair across two copies of the data would add seed 1
    assert "Missing cells (no pair yet): wide budget all seed 1." in text

    # what each machine still has to train: A its baseline of seed 1 (it holds wide's);
    # a new machine C both cells of seed 1
    def on(machine: str):
        return lambda cell: (machine, "n1", None)

    assert [c.describe() for c in todo(study, store.records(), on("A"))] == [
        "unet budget all seed 1"
    ]
    assert [c.describe() for c in todo(study, store.records(), on("C"))] == [
        "unet budget all seed 1",
        "wide budget all seed 1",
    ]


def test_records_are_checked_on_read_and_never_rewritten(kvasir_small, tmp_path):
    study = load_study(_study_file(tmp_path, kvasir_small))
    store = Store(tmp_path / "results", study.name)
    record = _fake(study, 0, 0, "A", "n1", 0.5)
    folder = Cell(study.variants[0], "all", 0).folder
    path = store.write(record, folder)
    assert read_record(path) == record
    with pytest.raises(MtlsegError, match="records are never rewritten"):
        store.write(dataclasses.replace(record, seed=0), folder)
    raw = json.loads(path.read_text())
    for broken, message in [
        ({k: v for k, v in raw.items() if k != "numerics"}, "has no 'numerics' field"),
        ({**raw, "schema": SCHEMA + 1}, f"record schema {SCHEMA + 1}"),
        ({k: v for k, v in raw.items() if k != "schema"}, "not an mtlseg study record"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(broken))
        with pytest.raises(MtlsegError, match=message) as err:
            read_record(bad)
        assert str(bad) in str(err.value)
    # an older record without the optional fields still reads
    minimal = {k: raw[k] for k in (*Record.REQUIRED, "scores", "schema")}
    (tmp_path / "old.json").write_text(json.dumps(minimal))
    assert read_record(tmp_path / "old.json").curves == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"variants": [{"name": "a", "recipe": "no-such-recipe"}]}, "unknown recipe"),
        (
            {"variants": [{"name": "a", "recipe": "unet", "set": ["model.params.widht=3"]}]},
            "model.params.widht: unknown key",
        ),
        (
            {"variants": [{"name": "a", "recipe": "unet-hog", "set": ["tasks.hog.params.cel=8"]}]},
            "tasks.hog.params.cel: unknown key",
        ),
        ({"seeds": 0}, "seeds: at least 1 seed"),
        (
            {"variants": [{"name": "a", "recipe": "unet"}, {"name": "a", "recipe": "unet-hog"}]},
            "two variants are named 'a'",
        ),
        ({"budgets": []}, "budgets: an empty list"),
        ({"ceiling": "nope"}, "ceiling: 'nope' is not a variant"),
    ],
)
def test_a_bad_study_is_a_clear_error_before_training(kvasir_small, tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_study(_study_file(tmp_path, kvasir_small, **change))


def test_a_store_that_cannot_be_written_fails_before_training(kvasir_small, tmp_path):
    study = load_study(_study_file(tmp_path, kvasir_small))
    (tmp_path / "file").write_text("")
    with pytest.raises(MtlsegError, match="the results store is not writable"):
        run_study(study, Store(tmp_path / "file", study.name), tmp_path / "work")
    assert not (tmp_path / "work" / study.name / "unet").exists()


def test_a_generated_page_is_checked_against_the_store(kvasir_small, tmp_path, capsys):
    from mtlseg.cli import main

    path = _study_file(tmp_path, kvasir_small)
    study = load_study(path)
    store = Store(tmp_path / "results", study.name)
    store.write(_fake(study, 0, 0, "A", "n1", 0.5), Cell(study.variants[0], "all", 0).folder)
    page = tmp_path / "page.md"
    page.write_text("# tiny\n\nprose\n\n<!-- study:tiny -->\nold\n<!-- /study:tiny -->\n\nmore\n")
    argv = ["study", "report", str(path), "--store", str(tmp_path / "results"), "--page", str(page)]
    assert main(argv) == 0
    assert main([*argv, "--check"]) == 0
    text = page.read_text()
    assert text.startswith("# tiny\n\nprose\n") and text.endswith("\nmore\n")
    assert "| all | unet | 1 of 2, exploratory | 0.5000 |" in text
    page.write_text(text.replace("0.5000", "0.5100", 1))  # a hand edit of the table
    assert main([*argv, "--check"]) == 2
    assert "differs from what its records give" in capsys.readouterr().err
    assert update_page(page, "tiny", render(build_report(study, store.records())))


def test_scoring_a_checkpoint_loads_it_once(kvasir_small, tmp_path, monkeypatch):
    from mtlseg.engine import inference
    from mtlseg.engine.data import prepare_data
    from mtlseg.engine.train import train
    from mtlseg.report import scores
    from mtlseg.settings import load_config

    cfg = load_config("unet", [*TINY, "train.max_steps=2", f"data.path={kvasir_small}"])
    result = train(cfg, tmp_path / "run")
    calls: list[str] = []
    real = inference.load_module

    def counted(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(inference, "load_module", counted)
    monkeypatch.setattr(scores, "load_module", counted)
    means, rows = scores.score_cases(
        result.last_checkpoint, str(kvasir_small), prepare_data(cfg.data)
    )
    assert len(calls) == 1
    assert means["dice/mean"] == pytest.approx(np.nanmean([r["dice/mean"] for r in rows]))
    assert "pixel_accuracy" in means  # the training-size metrics came from the same module


def test_submitit_lanes_train_each_cell_once(kvasir_small, tmp_path):
    """--launcher submitit, with submitit's local executor standing in for SLURM."""
    pytest.importorskip("submitit")
    study = load_study(_study_file(tmp_path, kvasir_small))
    store = Store(tmp_path / "results", study.name)
    said: list[str] = []
    done = run_study(
        study,
        store,
        tmp_path / "work",
        parallel=2,
        say=said.append,
        launcher="submitit",
        launcher_options={"cluster": "local"},
    )
    assert sorted(done.trained) == sorted(c.describe() for c in study.cells())
    assert len(_records(tmp_path / "results")) == 4
    assert said[0].startswith("submitted 2 lane job(s) (local)")


def test_figures_are_drawn_from_the_records(kvasir_small, tmp_path):
    from PIL import Image

    from mtlseg.study.report import draw_figures

    study = load_study(_study_file(tmp_path, kvasir_small))
    records = []
    for variant, seed in [(0, 0), (0, 1), (1, 0)]:
        record = _fake(study, variant, seed, "A", "n1", 0.5)
        record.curves = {"val": [[3, 0.2], [6, 0.4]], "train_loss": [[1, 2.0], [6, 1.0]]}
        records.append(record)
    (path,) = draw_figures(study, records, tmp_path / "figures")
    assert path.name == "curves-all.png"
    assert Image.open(path).size == (1440, 480)  # validation Dice and the training loss


def test_a_record_of_older_code_still_counts_for_its_row(kvasir_small, tmp_path):
    """A record whose configuration had other fields (so another cell key) is matched by
    its row, recipe, overrides, budget and seed; another seed or row is not."""
    study = load_study(_study_file(tmp_path, kvasir_small))
    cell = Cell(study.variants[1], "all", 0)
    old = _fake(study, 1, 0, "A", "n1", 0.5)
    old.cell, old.recipe, old.overrides = "0123456789", "unet", list(cell.variant.overrides)
    assert cell.holds(old)
    assert not Cell(study.variants[1], "all", 1).holds(old)
    assert not Cell(study.variants[0], "all", 0).holds(old)


def test_the_report_gives_each_rows_step_time_and_its_cost_over_the_baseline(
    kvasir_small, tmp_path
):
    study = load_study(_study_file(tmp_path, kvasir_small))
    records = []
    for variant, seed, machine, wall in [
        (0, 0, "A", 100.0),
        (1, 0, "A", 250.0),  # 2.5x the baseline on the same machine
        (0, 1, "B", 200.0),
        (1, 1, "B", 300.0),  # 1.5x on another, slower machine
    ]:
        record = _fake(study, variant, seed, machine, "n1", 0.5)
        record.steps, record.wall_s = 100, wall
        records.append(record)
    base, wide = build_report(study, records).rows
    assert base.step_s == pytest.approx({0: 1.0, 1: 2.0})
    assert wide.step_ratio == pytest.approx({0: 2.5, 1: 1.5})  # never across machines
    text = render(build_report(study, records))
    assert "| all | wide | 2.7500 ± 0.3536 | 2.0000 ± 0.7071 |" in text
