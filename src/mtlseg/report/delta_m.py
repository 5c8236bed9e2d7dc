"""delta-M: the mean relative change of every metric of every task against its single-task
baseline, in percent, signed so that LOWER is better (Navon et al. 2022, "Multi-task
learning as a bargaining game", section 6, the sign of Nash-MTL's tables):

    delta-M = 100 / |M| sum_{m in M} (-1)^{h_m} (M_m - M_{b,m}) / M_{b,m}

with h_m = 1 when higher is better for metric m (an improvement of it counts negative).
The measure is Maninis et al. 2019's (eq. 8 of "Attentive single-tasking of multiple
tasks"), who sign it the other way: there an improvement is positive."""

from __future__ import annotations

# metric suffix -> higher is better; metrics not listed are not part of delta-M
DIRECTIONS: dict[str, bool] = {
    "dice/mean": True,
    "iou/mean": True,
    "accuracy": True,
    "iou": True,
    "l2": False,
    "abs_err": False,
    "rel_err": False,
    "mean_angle": False,
    "median_angle": False,
    "within_11.25": True,
    "within_22.5": True,
    "within_30": True,
}
SEGMENTATION = ("dice/mean", "iou/mean")


def metric_direction(key: str) -> bool | None:
    """Higher-is-better of a metric key (``dice/mean``, ``task/normals/mean_angle``), or
    None when delta-M leaves it out (losses, per-class values)."""
    if key in SEGMENTATION:
        return True
    if key.startswith("task/"):
        return DIRECTIONS.get(key.split("/", 2)[-1])
    return None


def delta_m(run: dict[str, float], baseline: dict[str, float]) -> tuple[float, list[str]]:
    """(delta-M in percent, the metrics it averaged): every metric of ``run`` that has a
    direction and a non-zero baseline value in ``baseline``."""
    used, total = [], 0.0
    for key, value in run.items():
        higher = metric_direction(key)
        base = baseline.get(key)
        if higher is None or base is None or base == 0:
            continue
        change = (value - base) / abs(base)
        total += -change if higher else change
        used.append(key)
    if not used:
        return float("nan"), []
    return 100.0 * total / len(used), sorted(used)
