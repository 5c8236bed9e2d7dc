"""``mtlseg study report``: the study's tables, from its records alone.

Paired differences are formed only between records of the same seed, budget, machine
fingerprint, numerics key and data (``Record.pairing``); a seed paired on several machines is averaged over them first,
so a row's n is its number of distinct paired seeds. A row with fewer seeds than the study
asks of it is marked exploratory, and every cell still without a pair is listed. Means of
all of a row's records, paired or not, stand beside, labelled unpaired.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtlseg.report.tables import fmt_stat, mean_std, verdict
from mtlseg.study.spec import Cell, Study
from mtlseg.study.store import Record

METRIC = "dice/mean"


@dataclass
class Row:
    """One variant at one budget: per-seed values, each the mean over the machines where
    the seed is paired with the baseline."""

    variant: str
    budget: str
    asked: int  # seeds the study asks for
    scores: dict[int, float] = field(default_factory=dict)  # paired seeds: the row's score
    diffs: dict[int, float] = field(default_factory=dict)  # paired seeds: row - baseline
    best: dict[int, float] = field(default_factory=dict)  # best-on-val checkpoint's score
    gaps: dict[int, float] = field(default_factory=dict)  # share of the gap to the ceiling
    hd95: dict[int, float] = field(default_factory=dict)
    classes: dict[str, dict[int, float]] = field(default_factory=dict)
    unpaired: dict[int, float] = field(default_factory=dict)  # every record, by seed
    # paired seeds: wall seconds per training step (validation and scoring included), and
    # that over the baseline's on the same machine (the cost of the method)
    step_s: dict[int, float] = field(default_factory=dict)
    step_ratio: dict[int, float] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # seeds without a pair

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def exploratory(self) -> bool:
        return self.n < self.asked


@dataclass
class StudyReport:
    """The rows of every budget (the baseline first) and the study's name."""

    study: str
    baseline: str
    ceiling: str | None
    rows: list[Row]
    machines: dict[str, str]  # machine id -> description

    def missing_cells(self) -> list[str]:
        return [f"{r.variant} budget {r.budget} seed {s}" for r in self.rows for s in r.missing]


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def build_report(study: Study, records: list[Record]) -> StudyReport:
    """Pair ``records`` by the study's cells (``module docstring``)."""

    def of(cell: Cell) -> list[Record]:
        return [r for r in records if cell.holds(r)]

    rows: list[Row] = []
    base = study.baseline
    ceiling = study.ceiling
    ceiling_variant = next((v for v in study.variants if v.name == ceiling), None)
    for budget in study.budgets:
        for v in study.variants:
            if budget not in v.budgets:
                continue
            seeds = sorted({c.seed for c in study.cells() if c.variant is v and c.budget == budget})
            row = Row(v.name, budget, v.seeds if v is not base else len(seeds))
            for seed in seeds:
                cell = Cell(v, budget, seed)
                mine = of(cell)
                if mine:
                    row.unpaired[seed] = _mean([r.dice() for r in mine])
                theirs = {r.pairing: r for r in of(Cell(base, budget, seed))}
                pairs = [(r, theirs[r.pairing]) for r in mine if r.pairing in theirs]
                if not pairs:
                    row.missing.append(seed)
                    continue
                row.scores[seed] = _mean([r.dice() for r, _ in pairs])
                row.diffs[seed] = _mean([r.dice() - b.dice() for r, b in pairs])
                row.best[seed] = _mean([r.dice("best") for r, _ in pairs])
                timed = [(r, b) for r, b in pairs if _per_step(r) and _per_step(b)]
                if timed:
                    row.step_s[seed] = _mean([_per_step(r) for r, _ in timed])
                    row.step_ratio[seed] = _mean([_per_step(r) / _per_step(b) for r, b in timed])
                hd = [r.scores["last"]["summary"].get("hd95/mean") for r, _ in pairs]
                if all(h is not None for h in hd):
                    row.hd95[seed] = _mean([float(h) for h in hd])
                for r, _ in pairs:
                    for key, value in r.scores["last"]["summary"].items():
                        name = key.removeprefix("dice/")
                        if key.startswith("dice/") and name not in ("mean", "background"):
                            row.classes.setdefault(name, {}).setdefault(seed, float(value))
                if ceiling_variant is not None and "all" in ceiling_variant.budgets:
                    top = {r.pairing: r for r in of(Cell(ceiling_variant, "all", seed))}
                    shares = [
                        (r.dice() - b.dice()) / (top[r.pairing].dice() - b.dice())
                        for r, b in pairs
                        if r.pairing in top and top[r.pairing].dice() != b.dice()
                    ]
                    if shares:
                        row.gaps[seed] = _mean(shares)
            rows.append(row)
    machines = {r.machine_id: _describe(r.machine) for r in records}
    return StudyReport(study.name, base.name, ceiling, rows, machines)


def _per_step(record: Record) -> float:
    """Wall seconds per training step of a run (0 when it was not timed)."""
    return record.wall_s / record.steps if record.steps > 0 and record.wall_s > 0 else 0.0


def _describe(m: dict) -> str:
    flags = ", ".join(m.get("flags", [])) or "no listed flags"
    return (
        f"{m.get('device', '?')}, {m.get('cpu', '?')} ({flags}), {m.get('threads', '?')} "
        f"thread(s), torch {m.get('torch', '?')}, {m.get('precision', '?')}"
    )


def _stat(values: dict[int, float], signed: bool = False) -> str:
    return fmt_stat(mean_std(list(values.values())), signed) if values else "—"


def render(report: StudyReport) -> str:
    """Markdown: the table (one row per variant and budget), per-class Dice, the missing
    cells and the machines the records came from."""
    head = [
        "budget",
        "variant",
        "n",
        "Dice (last)",
        f"Δ vs {report.baseline} (paired)",
        "verdict (paired t-test, 5 %)",
    ]
    if report.ceiling:
        head.append("gap closed")
    head += ["HD95", "Dice best-on-val", "unpaired mean (n)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report.rows:
        is_base = row.variant == report.baseline
        n = f"{row.n}" + (f" of {row.asked}, exploratory" if row.exploratory else "")
        cells = [row.budget, row.variant, n, _stat(row.scores)]
        cells.append("—" if is_base else _stat(row.diffs, signed=True))
        cells.append("—" if is_base or not row.diffs else verdict(list(row.diffs.values())))
        if report.ceiling:
            cells.append(
                "—" if is_base or not row.gaps else f"{100 * _mean(list(row.gaps.values())):.0f} %"
            )
        cells += [_stat(row.hd95), _stat(row.best)]
        cells.append(f"{_stat(row.unpaired)} ({len(row.unpaired)})" if row.unpaired else "—")
        lines.append("| " + " | ".join(cells) + " |")
    parts = [
        f"Study `{report.study}`: Dice per case at the data's own resolution (mean over "
        "foreground classes), the last checkpoint of every run; each seed paired with the "
        f"baseline `{report.baseline}` on the same machine and code, n distinct seeds. "
        "Best-on-val is chosen on the split it is scored on (optimistic, for reference).",
        "\n".join(lines),
    ]
    classes = sorted({c for r in report.rows for c in r.classes})
    if classes:
        table = ["| budget | variant | " + " | ".join(classes) + " |"]
        table.append("|" + "---|" * (len(classes) + 2))
        for row in report.rows:
            values = [_stat(row.classes.get(c, {})) for c in classes]
            table.append(f"| {row.budget} | {row.variant} | " + " | ".join(values) + " |")
        parts.append("Per-class Dice (last checkpoint, paired seeds):\n\n" + "\n".join(table))
    if any(r.step_s for r in report.rows):
        table = [
            f"| budget | variant | s per step | x {report.baseline} (paired) |",
            "|---|---|---|---|",
        ]
        for row in report.rows:
            ratio = "—" if row.variant == report.baseline else _stat(row.step_ratio)
            table.append(f"| {row.budget} | {row.variant} | {_stat(row.step_s)} | {ratio} |")
        parts.append(
            "Time per training step (wall clock of the whole run, validation and scoring "
            "included, over its steps; on the machines below, one thread per run):\n\n"
            + "\n".join(table)
        )
    missing = report.missing_cells()
    parts.append(
        "Missing cells (no pair yet): " + (", ".join(missing) if missing else "none") + "."
    )
    if report.machines:
        parts.append(
            "Machines:\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in sorted(report.machines.items()))
        )
    return "\n\n".join(parts) + "\n"


def draw_figures(study: Study, records: list[Record], folder: Path) -> list[Path]:
    """From the records alone: ``curves-<budget>.png`` (validation Dice and training loss
    by step, each variant's mean over its records and their band) and, with several
    budgets, ``efficiency.png`` (last-checkpoint Dice against the labelled count)."""
    from mtlseg.report.plots import plot_curves, plot_efficiency

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    points: dict[str, list[tuple[int, list[float]]]] = {}
    for budget in study.budgets:
        val: dict[str, list] = {}
        loss: dict[str, list] = {}
        for v in study.variants:
            mine = [
                r
                for c in study.cells()
                if c.variant is v and c.budget == budget
                for r in records
                if c.holds(r)
            ]
            if not mine:
                continue
            val[v.name] = [_curve(r.curves.get("val", [])) for r in mine]
            loss[v.name] = [_curve(r.curves.get("train_loss", [])) for r in mine]
            points.setdefault(v.name, []).append(
                (max(r.labelled_count() for r in mine), [r.dice() for r in mine])
            )
        if val:
            written.append(plot_curves(val, folder / f"curves-{budget}.png", loss))
    if len(study.budgets) > 1 and points:
        written.append(plot_efficiency(points, folder / "efficiency.png"))
    return written


def _curve(points: list[list[float]]) -> tuple[list[int], list[float]]:
    return [int(p[0]) for p in points], [float(p[1]) for p in points]
