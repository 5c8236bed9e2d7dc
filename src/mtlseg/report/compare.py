"""``mtlseg compare``: every recipe x seed on one split, evaluated, tabulated and plotted."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtlseg.config import RunConfig, apply_override, load_recipe_dict, parse_override
from mtlseg.data.dataset import SliceDataset
from mtlseg.data.volumes import VolumeDataset
from mtlseg.engine.data import PreparedData, prepare_data
from mtlseg.engine.inference import load_module
from mtlseg.engine.precision import resolve_precision
from mtlseg.engine.probe import seconds_per_step
from mtlseg.errors import ConfigError, MtlsegError
from mtlseg.metrics import protocol
from mtlseg.report.delta_m import delta_m
from mtlseg.report.plots import plot_curves, plot_efficiency, plot_qualitative, plot_weights
from mtlseg.report.tables import (
    fmt_stat,
    markdown_table,
    mean_std,
    per_class_table,
    summarise,
    task_table,
    verdict,
)
from mtlseg.settings import load_config
from mtlseg.study.grid import grid_points  # noqa: F401  (compare --grid, re-exported)
from mtlseg.study.runner import Lane, machine_for
from mtlseg.study.spec import Cell, Study
from mtlseg.study.spec import Variant as StudyVariant
from mtlseg.study.store import Record, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One row of a comparison: a recipe plus overrides of its own, and the configuration
    they resolve to (built once, checked down to every component's params)."""

    name: str
    recipe: str
    overrides: tuple[str, ...] = ()
    aux_only: str | None = None  # a single-task run of this auxiliary task (delta-M baseline)
    config: RunConfig | None = None

    @property
    def folder(self) -> str:
        """The row's run folder name (the grid's values made safe for a path)."""
        return re.sub(r"[^A-Za-z0-9._=,@+-]", "_", self.name)


@dataclass
class Comparison:
    """What ``compare`` made: the rows' records (one per seed), their summary (mean ± std
    and paired differences per metric), the Markdown report and the files written."""

    records: dict[str, list[Record]]
    summary: dict[str, dict]
    table: str
    results: Path
    curves: Path
    weights: Path | None
    qualitative: Path

    def files(self) -> list[tuple[str, Path]]:
        """Every file and folder the comparison wrote, named for the final output."""
        out = self.results.parent
        written = [
            ("tables", out / "results.md"),
            ("results", self.results),
            ("curves", self.curves),
            ("loss weights", self.weights),
            ("qualitative grid", self.qualitative),
            ("split", out / "splits.json"),
            ("records", out / "records"),
            ("run folders", out / "<row>" / "seed<N>"),
        ]
        return [(label, path) for label, path in written if path is not None]


@dataclass
class BudgetSweep:
    """``compare_budgets``: one Comparison per label budget and the efficiency table."""

    budgets: dict[str, Comparison]
    table: str
    efficiency: Path


def expand(
    recipes: list[str],
    overrides: list[str],
    data_path: str,
    weightings: list[str] | None = None,
    single_task: bool = False,
    grid: list[tuple[str, ...]] | None = None,
) -> list[Variant]:
    """The rows to run: each recipe, each multi-task recipe once per weighting kind
    (``<recipe>+<kind>``), and with ``single_task`` each auxiliary task of each multi-task
    recipe trained alone (``<recipe>-only-<task>``: the segmentation loss weighted 0, the
    other tasks and cross-task terms dropped), the baselines delta-M needs.

    ``grid`` (``grid_points``): every recipe after the first (the baseline, run once as
    given) runs once per point, as rows ``<recipe>@<key=value,...>``."""
    variants: list[Variant] = []

    def _resolved(name: str, recipe: str, extra: tuple[str, ...]) -> RunConfig:
        """The row's configuration; every key exists, under a component's params too,
        before anything trains (``load_config`` types them)."""
        try:
            return load_config(recipe, [*overrides, *extra, f"data.path={data_path}"])
        except ConfigError as err:
            raise ConfigError(f"compare: {name}: {err}") from None

    for r, recipe in enumerate(recipes):
        stem = Path(recipe).stem
        cfg = load_config(recipe, [*overrides, f"data.path={data_path}"])
        multi = len(cfg.tasks) > 1
        kinds = weightings if (weightings and multi) else [None]
        points = grid if (grid and r > 0) else [()]
        for point in points:
            for kind in kinds:
                name = stem if kind is None else f"{stem}+{kind}"
                name += f"@{','.join(point)}" if point else ""
                extra = (*point, *(() if kind is None else (f"weighting.kind={kind}",)))
                variants.append(Variant(name, recipe, extra, None, _resolved(name, recipe, extra)))
        if not (single_task and multi):
            continue
        raw = load_recipe_dict(recipe)
        for text in [*overrides, f"data.path={data_path}"]:
            apply_override(raw, *parse_override(text))
        # indices into the recipe's task list, as --set tasks.N.* counts them
        enabled = [i for i, t in enumerate(raw["tasks"]) if t.get("enabled", True)]
        task_names = [t.name for t in cfg.tasks]  # the enabled ones, in order
        primary = enabled[task_names.index(cfg.primary)]
        aux = [i for i in enabled if i != primary]
        for i in aux:
            task = cfg.tasks[enabled.index(i)]
            drop = [f"tasks.{j}.enabled=false" for j in aux if j != i]
            extra = (f"tasks.{primary}.weight=0", *drop, "weighting.kind=fixed", "terms=[]")
            name = f"{stem}-only-{task.name}"
            variants.append(Variant(name, recipe, extra, task.name, _resolved(name, recipe, extra)))
    names = [v.name for v in variants]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"compare: the row {dup!r} appears twice; list each recipe once")
    return variants


def compare_budgets(
    recipes: list[str],
    data_path: str,
    seeds: int,
    out: Path | str,
    budgets: list[str],
    overrides: list[str] | tuple[str, ...] = (),
    **options: Any,
) -> BudgetSweep:
    """``compare`` once per label budget (``data.label_budget``: every recipe, the baseline
    too, on the same split and seeded draw), each in ``out/budget-<b>/``, then the
    data-efficiency curve: ``efficiency.png`` (Dice per case, last checkpoint, against the
    number of labelled patients or cases; the mean and the seeds' range per recipe) and
    ``efficiency.md``."""
    out = Path(out)
    results: dict[str, Comparison] = {}
    curves: dict[str, list[tuple[int, list[float]]]] = {}
    cells: dict[str, list[str]] = {}
    for budget in budgets:
        sets = [*overrides, f"data.label_budget={budget}"]
        result = compare(recipes, data_path, seeds, out / f"budget-{budget}", sets, **options)
        results[budget] = result
        for rank, (name, runs) in enumerate(result.records.items()):
            count = max(r.labelled_count() for r in runs)
            dice = [r.dice() for r in runs]
            curves.setdefault(name, []).append((count, dice))
            cell = f"{count} labelled: {fmt_stat(mean_std(dice))}"
            if rank > 0:  # against the baseline, the first recipe: compare's paired differences
                paired = result.summary[name]["paired"]["dice/mean"]
                cell += f", {fmt_stat(mean_std(paired), signed=True)}: {verdict(paired)}"
            cells.setdefault(name, []).append(cell)
    figure = plot_efficiency(curves, out / "efficiency.png")
    lines = ["| recipe | " + " | ".join(f"budget {b}" for b in budgets) + " |"]
    lines.append("|" + "---|" * (len(budgets) + 1))
    for name, row in cells.items():
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    table = (
        "Dice per case (a volume, or an image of 2D data; last checkpoint) against the label "
        "budget, then the paired difference against the first recipe at the same budget and "
        "its verdict; the labelled count is of patients (cases under split_mode case):\n\n"
        + "\n".join(lines)
    )
    (out / "efficiency.md").write_text(table + "\n")
    return BudgetSweep(results, table, figure)


def compare(
    recipes: list[str],
    data_path: str,
    seeds: int,
    out: Path | str,
    overrides: list[str] | tuple[str, ...] = (),
    grid_samples: int = 6,
    weightings: list[str] | None = None,
    single_task: bool = False,
    grid: list[tuple[str, ...]] | None = None,
) -> Comparison:
    """Train every recipe with seeds 0..seeds-1 on the same split; write results and figures.

    ``weightings``: run each multi-task recipe once per weighting kind; ``single_task``: also
    train each auxiliary task alone, so that delta-M can be computed; ``grid``: run the
    recipes after the first once per point (see ``expand``). Tables report the last
    checkpoint of every run (no selection), the best-on-validation one beside it; the paired
    differences and delta-M use the last one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides)
    first = load_config(recipes[0], [*overrides, f"data.path={data_path}"])
    # one precision for every run of the comparison (``auto`` resolved once, here)
    precision = resolve_precision(first.train.precision, first.train.accelerator)
    overrides.append(f"train.precision={precision}")
    data = prepare_data(first.data)
    split = data.split
    (out / "splits.json").write_text(json.dumps({"source": data.split_source, **split}, indent=1))
    variants = expand(recipes, overrides, data_path, weightings, single_task, grid)
    study, found = _run(variants, seeds, first, data, out, overrides, data_path)
    records: dict[str, list[Record]] = {}
    dirs: dict[str, list[Path]] = {}
    wanted = protocol(first.metrics.empty)
    for v in study.variants:
        cells = [Cell(v, study.budgets[0], s) for s in range(seeds)]
        dirs[v.name] = [_run_folder(out, c) for c in cells]
        records[v.name] = [found[c.key] for c in cells]
        for s, record in enumerate(records[v.name]):
            if record.protocol != wanted:
                raise MtlsegError(
                    f"{out}: the record of {v.name} seed {s} was scored by protocol "
                    f"v{record.protocol.get('version')}, this mtlseg scores by "
                    f"v{wanted['version']}: records are never rewritten, use a new --out"
                )
    scored = {
        name: [{k: r.scores[k]["summary"] for k in ("last", "best")} for r in rs]
        for name, rs in records.items()
    }
    runs = {name: [r["last"] for r in rs] for name, rs in scored.items()}
    best_runs = {name: [r["best"] for r in rs] for name, rs in scored.items()}
    aux_only = {v.name for v in variants if v.aux_only}
    summary, best = summarise(runs), summarise(best_runs)
    delta = delta_m_table(runs, variants) if aux_only else ""
    main = {k: v for k, v in summary.items() if k not in aux_only}
    table = markdown_table(main, selected={k: best[k] for k in main})
    per_class = per_class_table(main, "dice")
    slices = per_class_table(main, "slice_dice")
    tasks, recall = task_table(summary), task_table(summary, per_class=True)
    empty = first.metrics.empty
    report = "\n\n".join(
        x
        for x in (
            f"Validation split, last checkpoint of each run (no selection); per case at the "
            f"data's own resolution, a class in neither prediction nor truth: {empty} "
            f"(protocol v{protocol(empty)['version']}). The 'best-on-val' column is the "
            "checkpoint chosen on this same split: optimistic, for reference only.",
            table,
            delta,
            "Per-class Dice (per case):\n\n" + per_class if per_class else "",
            "Per-class Dice (slice-wise, secondary):\n\n" + slices if slices else "",
            "Auxiliary tasks (validation, last checkpoint):\n\n" + tasks if tasks else "",
            "Classification recall per class:\n\n" + recall if recall else "",
        )
        if x
    )
    (out / "results.md").write_text(report + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "recipes": recipes,
                "seeds": seeds,
                "data": data_path,
                "overrides": overrides,
                "split_source": data.split_source,
                "protocol": protocol(empty),
                "checkpoints": "last: the end of training; best: best validation Dice",
                "grid": [list(p) for p in grid or []],
                "runs": scored,
                "summary": summary,
                "summary_best": best,
            },
            indent=1,
        )
    )
    curves = plot_curves(
        {k: [_curve(r.curves.get("val", [])) for r in rs] for k, rs in records.items()},
        out / "curves.png",
        {k: [_curve(r.curves.get("train_loss", [])) for r in rs] for k, rs in records.items()},
    )
    weights = plot_weights(
        {k: d for k, d in dirs.items() if k not in aux_only}, out / "weights.png"
    )
    main_dirs = {k: d for k, d in dirs.items() if k not in aux_only}
    qualitative = _qualitative(main_dirs, data, out / "qualitative.png", grid_samples)
    return Comparison(records, summary, report, out / "results.json", curves, weights, qualitative)


def _curve(points: list[list[float]]) -> tuple[list[int], list[float]]:
    """A record's [[step, value], ...] as (steps, values)."""
    return [int(p[0]) for p in points], [float(p[1]) for p in points]


def _run_folder(out: Path, cell: Cell) -> Path:
    """compare's run folders: ``OUT/<row>/seed<s>/``."""
    return out / cell.variant.folder / f"seed{cell.seed}"


def _run(
    rows: list[Variant],
    seeds: int,
    first: RunConfig,
    data: PreparedData,
    out: Path,
    overrides: list[str],
    data_path: str,
) -> tuple[Study, dict[str, Record]]:
    """The comparison as a study of one label budget, run by the study runner into
    ``OUT/records/`` (runs already recorded there are reused), and each cell's record: the
    one made here by this code when there is one."""
    budget = str(first.data.label_budget)
    variants = tuple(
        StudyVariant(
            v.name,
            v.recipe,
            (*overrides, *v.overrides),
            v.config or load_config(v.recipe, [*overrides, *v.overrides, f"data.path={data_path}"]),
            seeds,
            (budget,),
        )
        for v in rows
    )
    study = Study("compare", data_path, variants, (budget,))
    store = Store(out, "records")
    lane = Lane(
        study,
        store,
        out,
        say=log.info,
        layout=lambda cell, machine, numerics: _run_folder(out, cell),
        split=data.split,
        claims=out / "records" / ".claims",
        probe=lambda cell: seconds_per_step(cell.config, data),
    )
    lane.prepared(data, first)
    lane.run()
    machine, numerics = machine_for(first)
    found: dict[str, Record] = {}
    for record in store.records():
        here = record.pairing[:2] == (machine.id, numerics)
        if here or record.cell not in found:
            found[record.cell] = record
    return study, found


def delta_m_table(runs: dict[str, list[dict]], variants: list[Variant]) -> str:
    """delta-M of every multi-task row, per seed against the same seed's baselines (the
    first row for segmentation, the ``-only-<task>`` rows for their task), mean ± std."""
    first = variants[0].name
    rows = ["| recipe | delta-M % (lower is better) | metrics |", "|---|---|---|"]
    for v in variants[1:]:
        if v.aux_only:
            continue
        stem = Path(v.recipe).stem
        only = {w.aux_only: w.name for w in variants if w.aux_only and Path(w.recipe).stem == stem}
        values: list[float] = []
        used: list[str] = []
        for seed, run in enumerate(runs[v.name]):
            baseline = {k: x for k, x in runs[first][seed].items() if not k.startswith("task/")}
            for task, name in only.items():
                if seed < len(runs[name]):
                    prefix = f"task/{task}/"
                    baseline.update(
                        {k: x for k, x in runs[name][seed].items() if k.startswith(prefix)}
                    )
            value, used = delta_m(run, baseline)
            values.append(value)
        cell = fmt_stat(mean_std(values))
        rows.append(f"| {v.name} | {cell} | {len(used)}: {', '.join(used)} |")
    return (
        "delta-M vs the single-task runs (Maninis et al. 2019's measure with Navon et al. "
        "2022's sign: an improvement is negative):\n\n" + "\n".join(rows)
    )


def _qualitative(dirs: dict[str, list[Path]], data: PreparedData, out: Path, n: int) -> Path:
    """Input | each recipe (seed 0, last checkpoint) | ground truth on validation samples with
    foreground: slices, or for 3D data the slice with most foreground of each volume, taken
    from the whole-volume prediction. Recipes trained in the other dimensionality than the
    first one are left out of the grid (logged)."""
    modules = {name: load_module(d[0] / "checkpoints" / "last.ckpt") for name, d in dirs.items()}
    dims = 3 if isinstance(data.val, VolumeDataset) else 2
    other = [k for k, m in modules.items() if m.spatial.dims != dims]
    if other:
        log.info("qualitative grid: %s trained in another data.dims, left out", other)
    modules = {k: m for k, m in modules.items() if k not in other}
    if not isinstance(data.val, SliceDataset):
        return _qualitative_volumes(modules, data, out, n)
    has_fg = (data.val.masks.flatten(1) > 0).any(1).nonzero()[:, 0]
    pool = has_fg if len(has_fg) >= n else torch.arange(len(data.val))
    chosen = pool[torch.linspace(0, len(pool) - 1, min(n, len(pool))).long()]
    images, masks = data.val.images[chosen].float(), data.val.masks[chosen]
    meta = data.val.meta_values[chosen]
    with torch.no_grad():
        predictions = {name: m.predict_labels(images, meta) for name, m in modules.items()}
    return plot_qualitative(images, masks, predictions, len(data.class_names), out)


def _qualitative_volumes(modules: dict, data: PreparedData, out: Path, n: int) -> Path:
    count = min(n, len(data.val))
    chosen = torch.linspace(0, len(data.val) - 1, count).long().tolist()
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    predictions: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    for i in chosen:
        volume, mask = data.val.images[i].float(), data.val.masks[i]
        z = int((mask > 0).flatten(0, 1).sum(0).argmax())  # the slice with most foreground
        images.append(volume[..., z])
        masks.append(mask[..., z])
        for name, m in modules.items():
            with torch.no_grad():
                predictions[name].append(m.predict_labels(volume[None])[0][..., z])
    stacked = {name: torch.stack(p) for name, p in predictions.items()}
    return plot_qualitative(
        torch.stack(images), torch.stack(masks), stacked, len(data.class_names), out
    )
