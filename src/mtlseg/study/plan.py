"""What a study (or ``compare``) is about to train, and about how long it will take: said
before the first run starts, so nobody waits hours without knowing it."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mtlseg.study.spec import Cell
from mtlseg.study.store import Record

# seconds per training step of a cell on this machine (a short probe), or None
Probe = Callable[[Cell], float | None]


@dataclass(frozen=True)
class Estimate:
    """About how many minutes a run takes, and what the figure rests on."""

    minutes: float | None
    basis: str


def estimate(cell: Cell, records: Sequence[Record], machine: str, probe: Probe | None) -> Estimate:
    """A cell's minutes: its wall-clock budget, or its steps x the seconds per step of the
    same row's records on this machine (training, validation and scoring), or of a probe
    (training steps only); the smaller of the two when a run has both a budget and steps."""
    t = cell.config.train
    budget = float(t.max_minutes) if t.max_minutes is not None else None
    if t.max_steps <= 0:
        if budget is not None:
            return Estimate(budget, "its wall-clock budget")
        return Estimate(None, "its length is in epochs")
    mine = [
        r.wall_s / r.steps
        for r in records
        if (r.variant, r.budget) == (cell.variant.name, cell.budget)
        and r.machine.get("id") == machine
        and r.steps > 0
    ]
    seconds, basis = None, ""
    if mine:
        seconds, basis = statistics.median(mine), "this machine's records of it"
    elif probe is not None and (probed := probe(cell)) is not None:
        seconds, basis = probed, "a probe of its training step"
    if seconds is None:
        if budget is not None:
            return Estimate(budget, "its wall-clock budget")
        return Estimate(None, "no run of it recorded here yet")
    minutes = t.max_steps * seconds / 60.0
    if budget is not None and budget < minutes:
        return Estimate(budget, "its wall-clock budget")
    return Estimate(minutes, f"{t.max_steps} steps x {seconds:.2f} s from {basis}")


def plan_lines(
    cells: Sequence[Cell],
    records: Sequence[Record],
    machine: str,
    lanes: int = 1,
    probe: Probe | None = None,
) -> list[str]:
    """The lines said before a study trains: each run and its estimate, and the total."""
    if not cells:
        return ["plan: nothing to train (every run is recorded)"]
    found: dict[str, Estimate] = {}
    lines = [f"plan: {len(cells)} run(s) on {lanes} lane(s)"]
    for i, cell in enumerate(cells, 1):
        key = f"{cell.variant.name}|{cell.budget}"
        if key not in found:  # a probe per row and budget, not per seed
            found[key] = estimate(cell, records, machine, probe)
        est = found[key]
        when = f"about {est.minutes:.0f} min" if est.minutes is not None else "time unknown"
        lines.append(f"  run {i}/{len(cells)}: {cell.describe()}: {when} ({est.basis})")
    minutes = [found[f"{c.variant.name}|{c.budget}"].minutes for c in cells]
    if all(m is not None for m in minutes):
        total = sum(m for m in minutes if m is not None) / max(1, lanes)
        lines.append(f"plan: about {_duration(total)} in all")
    return lines


def _duration(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 90 else f"{minutes:.0f} min"
