"""The `mtlseg` command: the decided surface works, and bad input is one clean line."""

import json

import pytest

from mtlseg.cli import main
from mtlseg.errors import ConfigError
from tests.conftest import TINY_UNET, power_cut_at


def _sets(*extra):
    return [x for s in (*TINY_UNET, *extra) for x in ("--set", s)]


def test_recipes_lists_the_shipped_recipes(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("unet ", "unet-hog", "u2net ", "u2net-hog"):
        assert name in out
    assert max(len(line) for line in out.splitlines()) <= 100  # wrapped, no 300-char lines


def test_train_evaluate_predict_through_the_cli(kvasir_small, tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", "--recipe", "unet-hog", "--data", str(kvasir_small), "--out", str(out)]
    assert main([*train, *_sets("train.max_steps=2", "train.val_every=2")]) == 0
    said = capsys.readouterr().out
    assert "best val Dice" in said
    assert f"also written: {out / 'config.yaml'}, {out / 'splits.json'}, " in said
    assert main([*train, "--resume", *_sets("train.max_steps=4", "train.val_every=2")]) == 0
    metrics_file = tmp_path / "metrics.json"
    assert (
        main(
            [
                "evaluate",
                "--ckpt",
                str(out / "checkpoints" / "best.ckpt"),
                "--data",
                str(kvasir_small),
                "--out",
                str(metrics_file),
            ]
        )
        == 0
    )
    metrics = json.loads(metrics_file.read_text())
    assert {"dice/foreground", "iou/mean", "pixel_accuracy", "native/hd95/mean"} <= set(metrics)
    assert metrics["protocol"]["empty"] == "exclude"
    assert (
        main(
            [
                "predict",
                "--ckpt",
                str(out / "checkpoints" / "last.ckpt"),
                "--input",
                str(kvasir_small / "images"),
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "pred").glob("*.png"))) == 12


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--recipe", "nope", "--data", ".", "--out", "x"], "unknown recipe 'nope'"),
        (
            ["train", "--recipe", "unet", "--data", "/no/such/dir", "--out", "x"],
            "/no/such/dir: data folder does not exist",
        ),
        (
            [
                "train",
                "--recipe",
                "unet",
                "--data",
                ".",
                "--out",
                "x",
                "--set",
                "train.max_steps=many",
            ],
            "train.max_steps: expected an integer",
        ),
        (
            ["evaluate", "--ckpt", "/no/such.ckpt", "--data", "."],
            "/no/such.ckpt: checkpoint not found",
        ),
    ],
)
def test_bad_input_is_one_clean_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("mtlseg: error:")


def test_compare_writes_table_results_and_figures(kvasir_small, tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--recipes", "unet", "unet-hog", "--data", str(kvasir_small)]
    argv += ["--seeds", "2", "--out", str(out), *_sets("train.max_steps=2", "train.val_every=1")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| unet |" in printed and "| unet-hog |" in printed and "Δ dice/mean vs unet" in printed
    assert "dice/mean best-on-val" in printed and "last checkpoint of each run" in printed
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]["unet"]) == 2 and len(results["runs"]["unet-hog"]) == 2
    runs = results["runs"]
    last = [[runs[r][i]["last"]["dice/mean"] for i in range(2)] for r in ("unet", "unet-hog")]
    expected = sum(b - a for a, b in zip(*last, strict=True)) / 2  # paired, on the last ckpt
    assert results["summary"]["unet-hog"]["diff"]["dice/mean"]["mean"] == pytest.approx(expected)
    assert results["protocol"]["empty"] == "exclude"
    # the reported scores are the per-case scores of the run's last checkpoint at the data's
    # own resolution, exactly what evaluate reports for it
    from mtlseg.engine.inference import evaluate_cases

    _, summary = evaluate_cases(
        out / "unet" / "seed1" / "checkpoints" / "last.ckpt", str(kvasir_small), "val"
    )
    assert runs["unet"][1]["last"]["dice/mean"] == pytest.approx(
        summary["metrics"]["dice/mean"]["mean"]
    )
    # both recipes trained on the same split
    for recipe in ("unet", "unet-hog"):
        for seed in range(2):
            split = json.loads((out / recipe / f"seed{seed}" / "splits.json").read_text())
            assert split["val"] == results_split(out)
    from PIL import Image

    # the grid: a row per validation image (at most 6), columns input, unet, unet-hog, truth
    rows = min(6, len(results_split(out)))
    assert Image.open(out / "qualitative.png").size == (220 * 4, 220 * rows)
    # every run left one record in OUT/records/; a finished compare is reused, not retrained
    records = sorted((out / "records").rglob("*.json"))
    assert len(records) == 4
    record = json.loads(
        next(p for p in records if "/unet/" in str(p) and "-s1-" in str(p)).read_text()
    )
    assert record["scores"]["last"]["summary"]["dice/mean"] == runs["unet"][1]["last"]["dice/mean"]
    assert len(record["scores"]["last"]["cases"]) == len(results_split(out))
    ckpt = out / "unet" / "seed0" / "checkpoints" / "last.ckpt"
    mtime, trained = records[0].stat().st_mtime_ns, ckpt.stat().st_mtime_ns
    assert main(argv) == 0
    assert records[0].stat().st_mtime_ns == mtime and ckpt.stat().st_mtime_ns == trained
    assert sorted((out / "records").rglob("*.json")) == records
    # records are evidence: scored by another protocol, they are not silently rewritten
    saved = json.loads(records[0].read_text())
    records[0].write_text(json.dumps({**saved, "protocol": {**saved["protocol"], "version": 1}}))
    assert main(argv) == 2
    assert "scored by protocol v1" in capsys.readouterr().err


def test_compare_resumes_a_run_cut_before_its_first_validation(
    kvasir_small, tmp_path, monkeypatch, capsys
):
    """A crash before the first validation leaves only interrupted.ckpt; compare continues it."""
    out = tmp_path / "cmp"
    argv = ["compare", "--recipes", "unet", "--data", str(kvasir_small), "--seeds", "1"]
    argv += ["--out", str(out), *_sets("train.max_steps=4", "train.val_every=4")]
    power_cut_at(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="power cut"):
        main(argv)
    monkeypatch.undo()
    run = out / "unet" / "seed0"
    assert not (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "checkpoints" / "interrupted.ckpt").is_file()
    assert main(argv) == 0
    steps = [int(r.split(",")[1]) for r in (run / "logs" / "metrics.csv").read_text().split()[1:]]
    (record,) = (out / "records").rglob("*.json")
    assert json.loads(record.read_text())["steps"] == 4
    assert max(steps) == 3  # the resumed run finished the 4 steps, not 2 + 4


def results_split(out):
    return json.loads((out / "splits.json").read_text())["val"]


def test_table_shows_no_spread_for_a_single_seed():
    from mtlseg.report.tables import markdown_table, summarise

    one = summarise({"a": [{"dice/mean": 0.5}], "b": [{"dice/mean": 0.7}]})
    three = summarise(
        {
            "a": [{"dice/mean": x} for x in (0.5, 0.6, 0.7)],
            "b": [{"dice/mean": x} for x in (0.6, 0.6, 0.9)],
        }
    )
    assert "±" not in markdown_table(one) and "| b | 1 | 0.7000 | +0.2000 |" in markdown_table(one)
    assert "| a | 3 | 0.6000 ± 0.1000 |" in markdown_table(three)
    assert three["b"]["diff"]["dice/mean"]["mean"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("diffs", "higher", "expected"),
    [
        # 2 df: two-sided p = 1 - t / sqrt(2 + t^2); t = 0.02 / (0.01 / sqrt 3) = 3.464
        ([0.01, 0.02, 0.03], True, "inside the noise (3/3 seeds ahead, t 3.5, p 0.074)"),
        # t = 0.06 / (0.01 / sqrt 3) = 10.392, p = 1 - 10.392 / sqrt(110) = 0.0091
        ([0.05, 0.06, 0.07], True, "better (3/3 seeds ahead, t 10.4, p 0.009)"),
        ([-0.05, -0.06, -0.07], True, "worse (0/3 seeds ahead, t -10.4, p 0.009)"),
        # HD95: a decrease is the gain
        ([-0.05, -0.06, -0.07], False, "better (3/3 seeds ahead, t 10.4, p 0.009)"),
        # 1 df: p = 1 - 2 atan(|t|) / pi; d = (0.1, 0.3): t = 0.2 / (0.1414 / sqrt 2) = 2
        ([0.1, 0.3], True, "inside the noise (2/2 seeds ahead, t 2.0, p 0.295)"),
        ([0.02, 0.02, 0.02], True, "better (3/3 seeds ahead, no spread)"),
        ([0.0, 0.0], True, "no difference (0/2 seeds ahead, no spread)"),
        ([0.03], True, "1 seed: no test (1/1 seeds ahead)"),
        ([0.03, float("nan"), 0.05], True, "no test: 1 seed(s) without a score"),
    ],
)
def test_verdict_is_a_paired_t_test_of_the_seeds(diffs, higher, expected):
    from mtlseg.report.tables import verdict

    assert verdict(diffs, 0.05, higher) == expected


def test_the_table_says_whether_each_row_helped():
    from mtlseg.report.tables import markdown_table, summarise

    runs = {
        "unet": [{"dice/mean": x, "hd95/mean": 9.0} for x in (0.60, 0.70, 0.65)],
        "unet-hog": [{"dice/mean": x, "hd95/mean": 8.0} for x in (0.65, 0.76, 0.72)],
    }
    lines = markdown_table(summarise(runs)).splitlines()
    assert lines[0].endswith("| Δ dice/mean vs unet | verdict (paired t-test, 5 %) |")
    # paired d = (0.05, 0.06, 0.07): better, though the means' spreads overlap
    assert lines[3].endswith("| +0.0600 ± 0.0100 | better (3/3 seeds ahead, t 10.4, p 0.009) |")
    assert lines[2].endswith("| — | — |")


def test_grid_points_product_pairs_quoted_lists_and_a_yaml_list(tmp_path):
    from mtlseg.report.compare import grid_points

    assert grid_points(["a=1,2", "b=x,y"]) == [
        ("a=1", "b=x"),
        ("a=1", "b=y"),
        ("a=2", "b=x"),
        ("a=2", "b=y"),
    ]
    # paper 000 Table 4: five explicit (alpha, beta) rows
    alpha = "tasks.0.weight=0.01,0.1,1,1,1"
    beta = "tasks.hog.weight=1,1,1,0.1,0.01"
    rows = grid_points([alpha, beta], pairs=True)
    assert len(rows) == 5 and rows[3] == ("tasks.0.weight=1", "tasks.hog.weight=0.1")
    assert grid_points(["model.params.channels=[8,16],[16,32]"]) == [
        ("model.params.channels=[8,16]",),
        ("model.params.channels=[16,32]",),
    ]
    listed = tmp_path / "grid.yaml"
    listed.write_text(
        "- {tasks.hog.params.cell: 8, tasks.hog.params.bins: 4}\n- {tasks.hog.params.cell: 32}\n"
    )
    assert grid_points([str(listed)]) == [
        ("tasks.hog.params.cell=8", "tasks.hog.params.bins=4"),
        ("tasks.hog.params.cell=32",),
    ]
    with pytest.raises(ConfigError, match="every key needs as many values"):
        grid_points(["a=1,2", "b=1"], pairs=True)
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        grid_points(["a"])


def test_the_grid_applies_to_the_recipes_after_the_baseline(kvasir_small):
    from mtlseg.report.compare import expand, grid_points

    grid = grid_points(["tasks.hog.params.cell=8,32"])
    variants = expand(["unet", "unet-hog"], list(TINY_UNET), str(kvasir_small), grid=grid)
    assert [v.name for v in variants] == [
        "unet",
        "unet-hog@tasks.hog.params.cell=8",
        "unet-hog@tasks.hog.params.cell=32",
    ]
    assert variants[1].overrides == ("tasks.hog.params.cell=8",)
    list_valued = expand(
        ["unet", "unet-hog"],
        [],
        str(kvasir_small),
        grid=grid_points(["model.params.channels=[4,8],[8,16]"]),
    )
    assert list_valued[1].folder == "unet-hog@model.params.channels=_4,8_"
    with pytest.raises(ConfigError, match="no list item named 'nothing'"):
        expand(
            ["unet", "unet-hog"],
            [],
            str(kvasir_small),
            grid=grid_points(["tasks.nothing.weight=1"]),
        )
    # a key under a component's params that its Config lacks fails here, before training
    with pytest.raises(ConfigError, match=r"unet-hog@tasks.hog.params.cel=8.*cel: unknown key"):
        expand(
            ["unet", "unet-hog"],
            [],
            str(kvasir_small),
            grid=grid_points(["tasks.hog.params.cel=8"]),
        )


def test_help_says_what_mtlseg_does_with_examples_and_version(capsys):
    from mtlseg import __version__

    with pytest.raises(SystemExit) as exit_help:
        main(["--help"])
    assert exit_help.value.code == 0
    text = capsys.readouterr().out
    assert "auxiliary tasks" in text and "examples:" in text and "mtlseg demo" in text
    assert "parse arguments" not in text  # no longer the module's docstring
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"mtlseg {__version__}"


def test_building_the_parser_imports_neither_torch_nor_monai():
    """``mtlseg --help`` and ``--version`` stay fast: argparse alone, no deep-learning stack."""
    import subprocess
    import sys

    code = (
        "import sys; from mtlseg.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'monai', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_option_of_every_command_has_help_text():
    import argparse

    from mtlseg.cli import build_parser
    from mtlseg.cli_doc import _subparsers

    missing = []

    def walk(parser: argparse.ArgumentParser, where: str) -> None:
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction) and action.help is None:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
        for name, sub in _subparsers(parser).items():
            walk(sub, f"{where} {name}")

    walk(build_parser(), "mtlseg")
    assert missing == []
