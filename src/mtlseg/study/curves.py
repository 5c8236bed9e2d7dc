"""A run's curves for its record: validation Dice, training loss and loss weights by step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mtlseg.report.plots import read_train_columns, read_val_curve

MAX_POINTS = 200  # per curve, so a record stays a few kB


def thin(steps: list[int], values: list[float], n: int = MAX_POINTS) -> list[list[float]]:
    """At most ``n`` evenly spaced [step, value] points, the last one always kept."""
    if len(steps) > n:
        keep = sorted({round(i * (len(steps) - 1) / (n - 1)) for i in range(n)})
        steps, values = [steps[i] for i in keep], [values[i] for i in keep]
    return [[s, round(v, 6)] for s, v in zip(steps, values, strict=True)]


def read_curves(metrics_csv: Path) -> dict[str, Any]:
    """``{"val": [[step, dice], ...], "train_loss": [...], "weights": {task: [...]}}`` from
    a run's ``logs/metrics.csv``."""
    run_dir = metrics_csv.parent.parent
    columns = read_train_columns(run_dir, "")
    loss = columns.get("loss", ([], []))
    return {
        "val": thin(*read_val_curve(run_dir)),
        "train_loss": thin(*loss),
        "weights": {
            k.removeprefix("weight_"): thin(*v)
            for k, v in columns.items()
            if k.startswith("weight_")
        },
    }
