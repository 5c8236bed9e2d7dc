"""Figures: validation curves per recipe, and a qualitative grid as paper 000's Fig. 6."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def read_val_curve(run_dir: Path, key: str = "val/dice") -> tuple[list[int], list[float]]:
    path = run_dir / "logs" / "metrics.csv"
    steps, values = [], []
    if path.is_file():
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    steps.append(int(row["step"]))
                    values.append(float(row[key]))
    return steps, values


Curve = tuple[list[int], list[float]]  # (steps, values)


def plot_curves(
    val: dict[str, list[Curve]], out: Path, loss: dict[str, list[Curve]] | None = None
) -> Path:
    """Validation Dice against training step, and beside it the training loss when given:
    per row the mean over seeds (line) and their min-max band (shaded), over the steps every
    seed has; a row with a single point is drawn as a marker."""
    panels = [("validation Dice (foreground mean)", val)]
    if loss and any(c[0] for curves in loss.values() for c in curves):
        panels.append(("training loss", loss))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (label, series) in zip(axes[0], panels, strict=True):
        for name, curves in series.items():
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            n = min(len(c[0]) for c in curves)
            steps = curves[0][0][:n]
            values = np.array([c[1][:n] for c in curves])
            ax.plot(steps, values.mean(0), label=name, marker="o" if n == 1 else None)
            ax.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
        ax.set_xlabel("training step")
        ax.set_ylabel(label)
    return _finish_line_plot(fig, list(axes[0]), out)


def plot_efficiency(
    curves: dict[str, list[tuple[int, list[float]]]],
    out: Path,
    ylabel: str = "Dice per case (volume or image)",
) -> Path:
    """Data efficiency: per recipe, (labelled count, values over seeds) points, the mean as a
    line and the seeds' range as a band, against the labelled count."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        points = sorted(points)
        x = [n for n, _ in points]
        values = [np.asarray(v, dtype=float) for _, v in points]
        ax.plot(x, [v.mean() for v in values], marker="o", label=name)
        ax.fill_between(x, [v.min() for v in values], [v.max() for v in values], alpha=0.2)
    ax.set_xlabel("labelled patients (cases)")
    ax.set_ylabel(ylabel)
    return _finish_line_plot(fig, ax, out)


def read_train_columns(run_dir: Path, prefix: str) -> dict[str, tuple[list[int], list[float]]]:
    """Every ``train/<prefix>*`` column of a run's metrics.csv: {name: (steps, values)}."""
    path = run_dir / "logs" / "metrics.csv"
    out: dict[str, tuple[list[int], list[float]]] = {}
    if not path.is_file():
        return out
    with open(path) as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith(f"train/{prefix}") and value:
                    steps, values = out.setdefault(key.removeprefix("train/"), ([], []))
                    steps.append(int(row["step"]))
                    values.append(float(value))
    return out


def plot_weights(run_dirs: dict[str, list[Path]], out: Path) -> Path | None:
    """Each task's effective loss weight against step (seed 0), one panel per run that
    logged weights; aggregators' gradient cosines dashed on the same panel."""
    series = {name: read_train_columns(dirs[0], "") for name, dirs in run_dirs.items() if dirs}
    series = {
        name: {k: v for k, v in cols.items() if k.startswith(("weight_", "cos_"))}
        for name, cols in series.items()
    }
    series = {name: cols for name, cols in series.items() if cols}
    if not series:
        return None
    n = len(series)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (name, columns) in zip(axes.flat, series.items(), strict=False):
        for key, (steps, values) in sorted(columns.items()):
            ax.plot(steps, values, "--" if key.startswith("cos_") else "-", label=key, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _colour(labels: np.ndarray, num_classes: int) -> np.ndarray:
    cmap = plt.get_cmap("tab10")
    rgb = np.zeros((*labels.shape, 3))
    for k in range(1, num_classes):
        rgb[labels == k] = cmap((k - 1) % 10)[:3]
    return rgb


def _display(image: torch.Tensor) -> np.ndarray:
    x = image.float().numpy()
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-8)
    return np.moveaxis(x, 0, -1) if x.shape[0] == 3 else x[0]


def plot_qualitative(
    images: torch.Tensor,
    masks: torch.Tensor,
    predictions: dict[str, torch.Tensor],
    num_classes: int,
    out: Path,
) -> Path:
    """Rows of samples; columns input | each recipe's prediction | ground truth."""
    columns = ["input", *predictions, "ground truth"]
    n = len(images)
    fig, axes = plt.subplots(n, len(columns), figsize=(2.2 * len(columns), 2.2 * n), squeeze=False)
    for i in range(n):
        panels = [_display(images[i])] + [
            _colour(p[i].numpy(), num_classes) for p in predictions.values()
        ]
        panels.append(_colour(masks[i].numpy(), num_classes))
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _finish_line_plot(fig: Any, ax: Any, out: Path) -> Path:
    """Grid and legend on ``ax`` (an axis or a list of them), tight layout; write ``out`` and
    free the figure."""
    for a in ax if isinstance(ax, list) else [ax]:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
