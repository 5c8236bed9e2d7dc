"""The report's figures: the numbers they plot (read back from the run's logs), the grid's
layout and its colours, on hand-made logs and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from mtlseg.report.plots import (
    _colour,
    plot_curves,
    plot_qualitative,
    plot_weights,
    read_train_columns,
    read_val_curve,
)


def _run(tmp_path, name: str, rows: list[dict[str, str]]):
    logs = tmp_path / name / "logs"
    logs.mkdir(parents=True)
    keys = sorted({k for r in rows for k in r})
    lines = [",".join(keys)] + [",".join(r.get(k, "") for k in keys) for r in rows]
    (logs / "metrics.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / name


def test_curves_and_weights_are_read_from_the_logged_rows(tmp_path):
    run = _run(
        tmp_path,
        "a",
        [
            {"step": "9", "train/weight_hog": "0.5", "train/cos_segmentation-hog": "0.1"},
            {"step": "9", "val/dice": "0.25"},
            {"step": "19", "train/weight_hog": "0.75", "train/loss": "1.0"},
            {"step": "19", "val/dice": "0.5"},
        ],
    )
    assert read_val_curve(run) == ([9, 19], [0.25, 0.5])
    columns = read_train_columns(run, "weight_")
    assert columns == {"weight_hog": ([9, 19], [0.5, 0.75])}
    assert set(read_train_columns(run, "")) == {"weight_hog", "cos_segmentation-hog", "loss"}
    out = plot_curves({"a": [read_val_curve(run)]}, tmp_path / "curves.png")
    assert Image.open(out).size == (720, 480)  # 6 x 4 inches at 120 dpi
    with_loss = plot_curves(
        {"a": [read_val_curve(run)]}, tmp_path / "two.png", {"a": [columns_loss(run)]}
    )
    assert Image.open(with_loss).size == (1440, 480)  # the training loss beside
    assert plot_weights({"a": [run]}, tmp_path / "weights.png") is not None
    plain = _run(tmp_path, "b", [{"step": "9", "val/dice": "0.2"}])
    assert plot_weights({"b": [plain]}, tmp_path / "none.png") is None, "no weight logged"


def columns_loss(run):
    return read_train_columns(run, "loss")["loss"]


def test_a_curve_of_one_validation_is_drawn_as_a_marker(tmp_path, monkeypatch):
    import matplotlib.axes

    markers = []
    real = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        markers.append(kwargs.get("marker"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    plot_curves({"one": [([5], [0.5])], "two": [([5, 9], [0.4, 0.6])]}, tmp_path / "c.png")
    assert markers == ["o", None]


def test_label_colours_are_tab10_and_background_black():
    labels = np.array([[0, 1], [2, 11]])
    rgb = _colour(labels, 12)
    tab10 = colormaps["tab10"]
    assert rgb[0, 0].tolist() == [0.0, 0.0, 0.0]
    assert rgb[0, 1] == pytest.approx(tab10(0)[:3])  # class k takes colour k - 1
    assert rgb[1, 0] == pytest.approx(tab10(1)[:3])
    assert rgb[1, 1] == pytest.approx(tab10(0)[:3])  # class 11 wraps round to colour 0


def test_the_grid_has_a_row_per_sample_and_a_column_per_recipe(tmp_path):
    images = torch.rand(3, 1, 16, 16)
    masks = torch.zeros(3, 16, 16, dtype=torch.long)
    masks[:, 4:8, 4:8] = 1
    predictions = {"unet": masks.clone(), "unet-hog": torch.zeros_like(masks)}
    out = plot_qualitative(images, masks, predictions, 2, tmp_path / "grid.png")
    # columns: input, each recipe, ground truth; 2.2 inches each at 100 dpi
    assert Image.open(out).size == (220 * 4, 220 * 3)
