"""``mtlseg compare``: every recipe x seed on one split, evaluated, tabulated and plotted."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mtlseg.config import apply_override, load_config, load_recipe_dict, parse_override
from mtlseg.data.volumes import VolumeDataset
from mtlseg.engine.data import PreparedData, prepare_data
from mtlseg.engine.inference import evaluate, load_module, predict_volume, segment_slices
from mtlseg.engine.train import resume_checkpoint, train
from mtlseg.errors import ConfigError
from mtlseg.report.delta_m import delta_m
from mtlseg.report.plots import plot_curves, plot_qualitative, plot_weights
from mtlseg.report.tables import (
    fmt_stat,
    markdown_table,
    mean_std,
    per_class_table,
    summarise,
    task_table,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One row of a comparison: a recipe plus overrides of its own."""

    name: str
    recipe: str
    overrides: tuple[str, ...] = ()
    aux_only: str | None = None  # a single-task run of this auxiliary task (delta-M baseline)


def expand(
    recipes: list[str],
    overrides: list[str],
    data_path: str,
    weightings: list[str] | None = None,
    single_task: bool = False,
) -> list[Variant]:
    """The rows to run: each recipe, each multi-task recipe once per weighting kind
    (``<recipe>+<kind>``), and with ``single_task`` each auxiliary task of each multi-task
    recipe trained alone (``<recipe>-only-<task>``: the segmentation loss weighted 0, the
    other tasks and cross-task terms dropped), the baselines delta-M needs."""
    variants: list[Variant] = []
    for recipe in recipes:
        stem = Path(recipe).stem
        cfg = load_config(recipe, [*overrides, f"data.path={data_path}"])
        multi = len(cfg.tasks) > 1
        kinds = weightings if (weightings and multi) else [None]
        for kind in kinds:
            name = stem if kind is None else f"{stem}+{kind}"
            extra = () if kind is None else (f"weighting.kind={kind}",)
            variants.append(Variant(name, recipe, extra))
        if not (single_task and multi):
            continue
        raw = load_recipe_dict(recipe)
        for text in [*overrides, f"data.path={data_path}"]:
            apply_override(raw, *parse_override(text))
        # indices into the recipe's task list, as --set tasks.N.* counts them
        enabled = [i for i, t in enumerate(raw["tasks"]) if t.get("enabled", True)]
        for i in enabled[1:]:
            task = cfg.tasks[enabled.index(i)]
            drop = [f"tasks.{j}.enabled=false" for j in enabled[1:] if j != i]
            extra = ("tasks.0.weight=0", *drop, "weighting.kind=fixed", "terms=[]")
            variants.append(Variant(f"{stem}-only-{task.name}", recipe, extra, task.name))
    names = [v.name for v in variants]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"compare: the row {dup!r} appears twice; list each recipe once")
    return variants


def _run_one(
    variant: Variant, seed: int, data_path: str, overrides: list[str], run_dir: Path, shared
) -> dict:
    """Train and evaluate one (variant, seed); a finished run is reused, a partial one
    resumed. A single-task auxiliary run is scored at its last checkpoint (its best one is
    chosen by a Dice it does not train for)."""
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    cfg = load_config(
        variant.recipe,
        [*overrides, *variant.overrides, f"data.path={data_path}", f"train.seed={seed}"],
    )
    # the loaded data is reused when the recipe prepares it the same way; the split always is
    data = shared[1] if cfg.data == shared[0] else prepare_data(cfg.data, split=shared[1].split)
    # a run stopped by a crash or Ctrl-C before its first validation has only interrupted.ckpt
    result = train(cfg, run_dir, resume=resume_checkpoint(run_dir) is not None, data=data)
    ckpt = result.last_checkpoint if variant.aux_only else result.best_checkpoint
    metrics = evaluate(ckpt, data_path, "val", data=data)
    metrics_file.write_text(json.dumps(metrics, indent=1))
    return metrics


def compare(
    recipes: list[str],
    data_path: str,
    seeds: int,
    out: Path | str,
    overrides: list[str] | tuple[str, ...] = (),
    grid_samples: int = 6,
    weightings: list[str] | None = None,
    single_task: bool = False,
) -> dict:
    """Train every recipe with seeds 0..seeds-1 on the same split; write results and figures.

    ``weightings``: run each multi-task recipe once per weighting kind; ``single_task``: also
    train each auxiliary task alone, so that delta-M can be computed (see ``expand``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides)
    first = load_config(recipes[0], [*overrides, f"data.path={data_path}"])
    data = prepare_data(first.data)
    split = data.split
    (out / "splits.json").write_text(json.dumps({"source": data.split_source, **split}, indent=1))
    runs: dict[str, list[dict]] = {}
    dirs: dict[str, list[Path]] = {}
    variants = expand(recipes, overrides, data_path, weightings, single_task)
    for v in variants:
        dirs[v.name] = [out / v.name / f"seed{s}" for s in range(seeds)]
        runs[v.name] = [
            _run_one(v, s, data_path, overrides, d, (first.data, data))
            for s, d in enumerate(dirs[v.name])
        ]
    aux_only = {v.name for v in variants if v.aux_only}
    summary = summarise(runs)
    delta = delta_m_table(runs, variants) if aux_only else ""
    main = {k: v for k, v in summary.items() if k not in aux_only}
    table = markdown_table(main)
    per_class = per_class_table(main, "dice")
    volume = per_class_table(main, "volume_dice")
    tasks, recall = task_table(summary), task_table(summary, per_class=True)
    report = "\n\n".join(
        x
        for x in (
            table,
            delta,
            "Per-class Dice (slice-wise):\n\n" + per_class if per_class else "",
            "Per-class Dice (per volume):\n\n" + volume if volume else "",
            "Auxiliary tasks (validation):\n\n" + tasks if tasks else "",
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
                "runs": runs,
                "summary": summary,
            },
            indent=1,
        )
    )
    curves = plot_curves(dirs, out / "curves.png")
    weights = plot_weights(
        {k: d for k, d in dirs.items() if k not in aux_only}, out / "weights.png"
    )
    main_dirs = {k: d for k, d in dirs.items() if k not in aux_only}
    grid = _qualitative(main_dirs, data, out / "qualitative.png", grid_samples)
    return {
        "table": report,
        "results": out / "results.json",
        "curves": curves,
        "weights": weights,
        "qualitative": grid,
    }


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
        values, used = [], []
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
    return "delta-M vs the single-task runs (Maninis et al. 2019):\n\n" + "\n".join(rows)


def _qualitative(dirs: dict[str, list[Path]], data: PreparedData, out: Path, n: int) -> Path:
    """Input | each recipe (seed 0, best checkpoint) | ground truth on validation samples with
    foreground: slices, or for 3D data the slice with most foreground of each volume, taken
    from the whole-volume prediction. Recipes trained in the other dimensionality than the
    first one are left out of the grid (logged)."""
    modules = {name: load_module(d[0] / "checkpoints" / "best.ckpt") for name, d in dirs.items()}
    volumetric = isinstance(data.val, VolumeDataset)
    other = [k for k, m in modules.items() if m.volumetric != volumetric]
    if other:
        log.info("qualitative grid: %s trained in another data.dims, left out", other)
    modules = {k: m for k, m in modules.items() if k not in other}
    if volumetric:
        return _qualitative_volumes(modules, data, out, n)
    has_fg = (data.val.masks.flatten(1) > 0).any(1).nonzero()[:, 0]
    pool = has_fg if len(has_fg) >= n else torch.arange(len(data.val))
    chosen = pool[torch.linspace(0, len(pool) - 1, min(n, len(pool))).long()]
    images, masks = data.val.images[chosen].float(), data.val.masks[chosen]
    meta = data.val.meta_values[chosen]
    predictions = {
        name: m.seg_task.decode(segment_slices(m, images, meta)) for name, m in modules.items()
    }
    return plot_qualitative(images, masks, predictions, len(data.class_names), out)


def _qualitative_volumes(modules: dict, data: PreparedData, out: Path, n: int) -> Path:
    count = min(n, len(data.val))
    chosen = torch.linspace(0, len(data.val) - 1, count).long().tolist()
    images, masks, predictions = [], [], {name: [] for name in modules}
    for i in chosen:
        volume, mask = data.val.images[i].float(), data.val.masks[i]
        z = int((mask > 0).flatten(0, 1).sum(0).argmax())  # the slice with most foreground
        images.append(volume[..., z])
        masks.append(mask[..., z])
        for name, m in modules.items():
            predictions[name].append(predict_volume(m, volume[None])[0][..., z])
    stacked = {name: torch.stack(p) for name, p in predictions.items()}
    return plot_qualitative(
        torch.stack(images), torch.stack(masks), stacked, len(data.class_names), out
    )
