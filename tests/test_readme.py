"""README's quickstart, every line as written, on a small real data set: with
``$MTLSEG_SET`` (the documented way to make every line a run of seconds), so that the
quickstart cannot drift from the commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mtlseg.cli import main
from tests.conftest import REPO, make_kvasir_subset

SMALL = ";".join(
    [
        "model.params.channels=[4,8,16]",
        "data.image_size=32",
        "train.batch_size=4",
        "train.max_minutes=null",
        "train.max_steps=2",
        "train.val_every=2",
        "data.augment=none",
        "data.num_workers=0",
    ]
)


def quickstart() -> list[str]:
    """The ``mtlseg`` commands of README's quickstart block, comments left off."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Quickstart on your own data", 1)[1].split("```bash", 1)[1]
    lines = [line.split(" #")[0].strip() for line in block.split("```", 1)[0].splitlines()]
    commands = [part.strip() for line in lines for part in line.split("&&")]
    return [c for c in commands if c.startswith("mtlseg ")]


def test_the_quickstart_names_every_command_it_shows():
    commands = {shlex.split(c)[1] for c in quickstart()}
    assert commands == {
        "check-data",
        "train",
        "compare",
        "evaluate",
        "predict",
        "export",
        "download",
        "study",
    }


def test_every_quickstart_line_runs_as_written(tmp_path, monkeypatch, capsys):
    data = make_kvasir_subset(tmp_path / "data", n=30)  # 10 %: 2 labelled images, as BCP pairs
    study = {
        "name": "quick",
        "data": str(data),
        "seeds": 1,
        "variants": [{"name": "unet", "recipe": "unet"}, {"name": "hog", "recipe": "unet-hog"}],
    }
    (tmp_path / "STUDY.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MTLSEG_SET", SMALL)
    for line in quickstart():
        argv = shlex.split(re.sub(r"\bDATA\b", str(data), line))[1:]
        argv = [str(data / "images") if a == "new_images/" else a for a in argv]
        assert main(argv) == 0, f"{line}\n{capsys.readouterr().err[-2000:]}"
    assert json.loads(Path("scores.json").read_text())["native/num_cases"] == 30  # --split all
    assert sorted(p.name for p in Path("masks").iterdir()) == sorted(
        p.name for p in Path("masks-onnx").iterdir()
    )
    assert (Path("runs/cmp") / "results.md").is_file() and Path("unet.onnx").is_file()
    records = sorted(Path("results/quick").rglob("*.json"))
    assert len(records) == 2


@pytest.mark.parametrize("text", ["train.max_steps=2;data.image_size=32", " train.max_steps=2 ; "])
def test_mtlseg_set_applies_after_every_set(monkeypatch, text):
    from mtlseg.settings import load_config

    monkeypatch.setenv("MTLSEG_SET", text)
    cfg = load_config("unet", ["train.max_steps=500"])
    assert cfg.train.max_steps == 2
