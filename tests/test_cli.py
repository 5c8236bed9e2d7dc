"""The `mtlseg` command: the decided surface works, and bad input is one clean line."""

import json

import pytest

from mtlseg.cli import main
from tests.conftest import TINY_UNET, power_cut_at


def _sets(*extra):
    return [x for s in (*TINY_UNET, *extra) for x in ("--set", s)]


def test_recipes_lists_the_shipped_recipes(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in ("unet ", "unet-hog", "u2net ", "u2net-hog"):
        assert name in out


def test_train_evaluate_predict_through_the_cli(kvasir_small, tmp_path, capsys):
    out = tmp_path / "run"
    train = ["train", "--recipe", "unet-hog", "--data", str(kvasir_small), "--out", str(out)]
    assert main([*train, *_sets("train.max_steps=2", "train.val_every=2")]) == 0
    assert "best val Dice" in capsys.readouterr().out
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
    assert {"dice/foreground", "iou/mean", "hd95/mean", "pixel_accuracy"} <= set(metrics)
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
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]["unet"]) == 2 and len(results["runs"]["unet-hog"]) == 2
    runs = results["runs"]
    expected = (
        sum(runs["unet-hog"][i]["dice/mean"] - runs["unet"][i]["dice/mean"] for i in range(2)) / 2
    )
    assert results["summary"]["unet-hog"]["diff"]["dice/mean"]["mean"] == pytest.approx(expected)
    # both recipes trained on the same split
    for recipe in ("unet", "unet-hog"):
        for seed in range(2):
            split = json.loads((out / recipe / f"seed{seed}" / "splits.json").read_text())
            assert split["val"] == results_split(out)
    for png in ("curves.png", "qualitative.png"):
        assert (out / png).stat().st_size > 5000
    # a finished compare is reused, not retrained
    mtime = (out / "unet" / "seed0" / "metrics.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "unet" / "seed0" / "metrics.json").stat().st_mtime_ns == mtime


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
    assert json.loads((run / "metrics.json").read_text())["dice/mean"] >= 0
    assert max(steps) == 3  # the resumed run finished the 4 steps, not 2 + 4


def results_split(out):
    return json.loads((out / "splits.json").read_text())["val"]


def test_demo_without_data_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MTLSEG_DATA", str(tmp_path / "nothing"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mtlseg.cli.Path.is_dir", lambda self: False)
    assert main(["demo"]) == 2
    assert "no data found: pass --data DIR or set MTLSEG_DATA" in capsys.readouterr().err


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
