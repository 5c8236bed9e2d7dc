"""Shared fixtures: small real datasets cut from ../shared/data into a temp folder."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# `train.precision: auto` is bf16-mixed on a CPU with native bf16 and fp32 elsewhere; the
# suite's golden values are fp32's, so auto is pinned to fp32 here (subprocesses inherit it)
os.environ.setdefault("MTLSEG_AUTO_PRECISION", "32")
DATA_ROOT = Path(os.environ.get("MTLSEG_DATA", REPO.parent / "shared" / "data"))
KVASIR = DATA_ROOT / "kvasir-seg"
ACDC = DATA_ROOT / "acdc"

TINY_UNET = [
    "model.params.channels=[4,8,16]",
    "data.image_size=32",
    "train.batch_size=4",
    "train.progress_bar=false",
    "data.augment=false",
    "train.max_minutes=null",  # a clock-driven schedule is not bit-reproducible
]


GET_DATA = (
    f"real data not found in {DATA_ROOT}: get it with `mtlseg download kvasir-seg --resize 256 "
    "--dest DIR` and set MTLSEG_DATA=DIR (ACDC needs a registration: `mtlseg download acdc`)"
)


def require_data(path: Path) -> Path:
    """Skips the test when a real dataset is absent; one reason for all, so pytest's summary
    folds every such skip into one line saying how to get the data."""
    if not path.is_dir():
        pytest.skip(GET_DATA)
    return path


@pytest.fixture(scope="session")
def kvasir_root() -> Path:
    return require_data(KVASIR)


@pytest.fixture(scope="session")
def acdc_root() -> Path:
    return require_data(ACDC)


def make_kvasir_subset(dest: Path, n: int = 12) -> Path:
    """The first ``n`` Kvasir-SEG image/mask pairs (JPEG masks) in ``dest``."""
    require_data(KVASIR)
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for img in sorted((KVASIR / "images").iterdir())[:n]:
        shutil.copy(img, dest / "images" / img.name)
        shutil.copy(KVASIR / "masks" / img.name, dest / "masks" / img.name)
    return dest


def copy_acdc_cases(dest: Path, cases: list[str]) -> None:
    """The named ACDC cases (image and label) and dataset.json, as nnU-Net raw under ``dest``."""
    require_data(ACDC)
    (dest / "imagesTr").mkdir(parents=True, exist_ok=True)
    (dest / "labelsTr").mkdir(parents=True, exist_ok=True)
    shutil.copy(ACDC / "dataset.json", dest / "dataset.json")
    for case in cases:
        shutil.copy(ACDC / "labelsTr" / f"{case}.nii.gz", dest / "labelsTr")
        shutil.copy(ACDC / "imagesTr" / f"{case}_0000.nii.gz", dest / "imagesTr")


def make_acdc_subset(dest: Path, patients: int = 3, with_splits: bool = True) -> Path:
    """A few ACDC cases (both frames per patient) as nnU-Net raw, with a patient split."""
    require_data(ACDC)
    names = sorted(p.name for p in (ACDC / "labelsTr").iterdir())[: 2 * patients]
    cases = [n.removesuffix(".nii.gz") for n in names]
    copy_acdc_cases(dest, cases)
    if with_splits:
        (dest / "splits.json").write_text(json.dumps({"train": cases[:-2], "val": cases[-2:]}))
    return dest


@pytest.fixture
def kvasir_small(tmp_path: Path) -> Path:
    return make_kvasir_subset(tmp_path / "kvasir")


@pytest.fixture
def acdc_small(tmp_path: Path) -> Path:
    return make_acdc_subset(tmp_path / "acdc")


@pytest.fixture(scope="session")
def kvasir_images() -> np.ndarray:
    """Eight real Kvasir images as grey float arrays in [0, 1], (8, 256, 256)."""
    from skimage import io

    files = sorted((require_data(KVASIR) / "images").iterdir())[:8]
    return np.stack([io.imread(f).astype(np.float32).mean(-1) / 255.0 for f in files])


ACDC_GROUPS = ["patient002", "patient021", "patient042", "patient062", "patient082", "patient003"]
TINY_SEGNET = [
    "model.params.widths=[4,8,8,16,16]",
    "model.params.convs=[1,1,1,1,1]",
    "data.image_size=32",
    "train.batch_size=4",
    "train.progress_bar=false",
    "data.augment=false",
    "train.max_minutes=null",
]


def make_acdc_labelled(dest: Path, patients: list[str] = ACDC_GROUPS) -> Path:
    """Both frames of patients from each ACDC diagnostic group, their rows of
    case_labels.csv, and a split with the last two patients as val."""
    cases = [f"{p}_frame0{f}" for p in patients for f in (1, 2)]
    copy_acdc_cases(dest, cases)
    lines = (ACDC / "case_labels.csv").read_text().splitlines()
    rows = [lines[0]] + [r for r in lines[1:] if r.split(",")[0] in cases]
    (dest / "case_labels.csv").write_text("\n".join(rows) + "\n")
    (dest / "splits.json").write_text(json.dumps({"train": cases[:-4], "val": cases[-4:]}))
    return dest


def make_kvasir_boxed(dest: Path, n: int = 12) -> Path:
    """``make_kvasir_subset`` plus the real box file's entries for those images."""
    make_kvasir_subset(dest, n)
    boxes = json.loads((KVASIR / "kavsir_bboxes.json").read_text())
    ids = {p.stem for p in (dest / "images").iterdir()}
    (dest / "kavsir_bboxes.json").write_text(json.dumps({k: boxes[k] for k in ids}))
    return dest


@pytest.fixture
def acdc_labelled(tmp_path: Path) -> Path:
    return make_acdc_labelled(tmp_path / "acdc-labelled")


@pytest.fixture
def kvasir_boxed(tmp_path: Path) -> Path:
    return make_kvasir_boxed(tmp_path / "kvasir-boxed")


def power_cut_at(monkeypatch, step: int) -> None:
    """Make training raise ``RuntimeError("power cut")`` at optimiser step ``step``
    (``monkeypatch.undo()`` restores it)."""
    from mtlseg.engine.module import MultiTaskModule

    real_step = MultiTaskModule.training_step

    def crashing_step(self, batch, batch_idx):
        if self.global_step == step:
            raise RuntimeError("power cut")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(MultiTaskModule, "training_step", crashing_step)


def validation_of(ckpt: Path) -> dict[str, float]:
    """The validation metrics the run logged when it wrote ``ckpt`` (its metrics.csv row at
    the checkpoint's step): what a re-evaluation of the checkpoint must reproduce."""
    import csv

    import torch

    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    with open(ckpt.parent.parent / "logs" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/dice")]
    row = next(r for r in rows if int(r["step"]) == step - 1)  # logged before the increment
    return {k: float(v) for k, v in row.items() if k.startswith("val/") and v}


def pytest_configure(config) -> None:
    """Under pytest-xdist (`-n 2`, README's test command) each worker gets one thread, and so
    do the processes it starts: two workers of two threads on two cores oversubscribe."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter) -> None:
    """One line for every test skipped for want of real data (not one per test), then the
    other skip reasons once each."""
    reasons = [r.longrepr[2] for r in terminalreporter.stats.get("skipped", [])]
    folded = Counter(GET_DATA if GET_DATA in reason else reason for reason in reasons)
    for reason, count in folded.items():
        terminalreporter.write_line(f"{count} test(s) skipped: {reason.removeprefix('Skipped: ')}")
