"""Aggregate per-seed metrics into mean +- std and paired differences; render Markdown."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

HEADLINE = (
    "dice/mean",
    "iou/mean",
    "hd95/mean",
    "slice_dice/mean",
)


def mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "n": len(a),
    }


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict]:
    """{recipe: [metrics per seed]} -> {recipe: {metric: {mean, std, n}, "diff": {...}}}.

    ``diff`` is the paired difference (recipe - first recipe) per seed, then mean +- std:
    seeds share the split and initial seed, so pairing removes their shared variance;
    ``paired`` keeps the per-seed differences (for ``verdict``).
    """
    names = list(runs)
    base = runs[names[0]]
    summary = {}
    for name in names:
        metrics = sorted(set().union(*(r.keys() for r in runs[name])))
        entry: dict[str, dict] = {
            m: mean_std([r[m] for r in runs[name]])
            for m in metrics
            if all(m in r for r in runs[name])
        }
        n = min(len(base), len(runs[name]))
        entry["paired"] = {
            m: [runs[name][i][m] - base[i][m] for i in range(n)]
            for m in metrics
            if all(m in r for r in runs[name][:n]) and all(m in r for r in base[:n])
        }
        entry["diff"] = {m: mean_std(d) for m, d in entry["paired"].items()}
        summary[name] = entry
    return summary


LOWER_IS_BETTER = ("hd95/",)  # metric prefixes whose improvement is a decrease


def verdict(diffs: list[float], level: float = 0.05, higher_is_better: bool = True) -> str:
    """Did a row differ from the baseline beyond the seeds' noise? A two-sided one-sample
    t-test of its paired differences (t > 0: better), with how many seeds were ahead:
    ``better`` or ``worse`` when p < ``level``, else ``inside the noise``; one seed gives no
    test. With 3 seeds (2 degrees of freedom) the test is weak: a gain on every seed can
    still be inside the noise, and it says so rather than call it a gain."""
    d = np.asarray(diffs, dtype=float) * (1.0 if higher_is_better else -1.0)
    ahead = f"{int((d > 0).sum())}/{len(d)} seeds ahead"
    if not np.isfinite(d).all():  # a seed whose score is undefined (no case had the class)
        return f"no test: {int((~np.isfinite(d)).sum())} seed(s) without a score"
    if len(d) < 2:
        return f"1 seed: no test ({ahead})"
    spread = float(d.std(ddof=1))
    if spread == 0.0:  # the same difference on every seed: no noise to test against
        word = "no difference" if d.mean() == 0 else ("better" if d.mean() > 0 else "worse")
        return f"{word} ({ahead}, no spread)"
    t = float(d.mean()) / (spread / math.sqrt(len(d)))
    p = float(2 * stats.t.sf(abs(t), len(d) - 1))
    word = "inside the noise" if p >= level else ("better" if t > 0 else "worse")
    return f"{word} ({ahead}, t {t:.1f}, p {p:.3f})"


def fmt_stat(stat: dict[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    if stat["n"] < 2:  # one seed: no spread to report
        return f"{stat['mean']:{sign}.4f}"
    return f"{stat['mean']:{sign}.4f} ± {stat['std']:.4f}"


def markdown_table(
    summary: dict[str, dict],
    metrics: tuple[str, ...] | None = None,
    selected: dict[str, dict] | None = None,
) -> str:
    """One row per recipe; each metric as mean ± std, then its paired difference vs the first
    and the ``verdict`` on it (did the row help?). ``selected``: the same summary for the
    checkpoint chosen on validation, whose headline metric is shown beside, labelled
    ``best-on-val``."""
    names = list(summary)
    first = summary[names[0]]
    metrics = tuple(m for m in (metrics or HEADLINE) if m in first)
    header = ["recipe", "seeds"] + list(metrics) + [f"Δ {m} vs {names[0]}" for m in metrics[:1]]
    header.append("verdict (paired t-test, 5 %)")
    if selected:
        header.append(f"{metrics[0]} best-on-val")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        entry = summary[name]
        row = [name, str(entry[metrics[0]]["n"])] + [fmt_stat(entry[m]) for m in metrics]
        row.append("—" if name == names[0] else fmt_stat(entry["diff"][metrics[0]], signed=True))
        higher = not metrics[0].startswith(LOWER_IS_BETTER)
        row.append("—" if name == names[0] else verdict(entry["paired"][metrics[0]], 0.05, higher))
        if selected:
            row.append(
                fmt_stat(selected[name][metrics[0]]) if metrics[0] in selected[name] else "—"
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def per_class_table(summary: dict[str, dict], metric: str = "dice") -> str:
    """Per-class ``metric`` (mean ± std over seeds), foreground classes and their mean."""
    names = list(summary)
    classes = [
        k.split("/", 1)[1]
        for k in summary[names[0]]
        if k.startswith(f"{metric}/") and k != f"{metric}/background"
    ]
    if not classes:
        return ""
    lines = ["| recipe | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for name in names:
        lines.append(
            f"| {name} | "
            + " | ".join(fmt_stat(summary[name][f"{metric}/{c}"]) for c in classes)
            + " |"
        )
    return "\n".join(lines)


def task_table(summary: dict[str, dict], per_class: bool = False) -> str:
    """The auxiliary tasks' own metrics (``task/<name>/<metric>``), one column per metric
    any recipe has ("—" where a recipe lacks the task). ``per_class``: only the per-class
    recalls, else everything else (losses, accuracy, box L2 / IoU)."""
    keys = sorted(
        {k for entry in summary.values() for k in entry if k.startswith("task/")} - {"task/"}
    )
    keys = [k for k in keys if ("/recall/" in k) == per_class]
    if not keys:
        return ""
    header = ["recipe", *(k.removeprefix("task/") for k in keys)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in summary.items():
        cells = [fmt_stat(entry[k]) if k in entry else "—" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
