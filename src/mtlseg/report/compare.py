"""``mtlseg compare``: every recipe x seed on one split, evaluated, tabulated and plotted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mtlseg.config import load_config
from mtlseg.data.volumes import VolumeDataset
from mtlseg.engine.data import PreparedData, prepare_data
from mtlseg.engine.inference import evaluate, load_module, predict_volume, segment_slices
from mtlseg.engine.train import train
from mtlseg.report.plots import plot_curves, plot_qualitative
from mtlseg.report.tables import markdown_table, per_class_table, summarise, task_table

log = logging.getLogger(__name__)


def _run_one(
    recipe: str, seed: int, data_path: str, overrides: list[str], run_dir: Path, shared
) -> dict:
    """Train and evaluate one (recipe, seed); a finished run is reused, a partial one resumed."""
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        return json.loads(metrics_file.read_text())
    cfg = load_config(recipe, [*overrides, f"data.path={data_path}", f"train.seed={seed}"])
    # the loaded data is reused when the recipe prepares it the same way; the split always is
    data = shared[1] if cfg.data == shared[0] else prepare_data(cfg.data, split=shared[1].split)
    resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
    result = train(cfg, run_dir, resume=resume, data=data)
    metrics = evaluate(result.best_checkpoint, data_path, "val", data=data)
    metrics_file.write_text(json.dumps(metrics, indent=1))
    return metrics


def compare(
    recipes: list[str],
    data_path: str,
    seeds: int,
    out: Path | str,
    overrides: list[str] | tuple[str, ...] = (),
    grid_samples: int = 6,
) -> dict:
    """Train every recipe with seeds 0..seeds-1 on the same split; write results and figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides)
    first = load_config(recipes[0], [*overrides, f"data.path={data_path}"])
    data = prepare_data(first.data)
    split = data.split
    (out / "splits.json").write_text(json.dumps({"source": data.split_source, **split}, indent=1))
    runs: dict[str, list[dict]] = {}
    dirs: dict[str, list[Path]] = {}
    for recipe in recipes:
        name = Path(recipe).stem
        dirs[name] = [out / name / f"seed{s}" for s in range(seeds)]
        runs[name] = [
            _run_one(recipe, s, data_path, overrides, d, (first.data, data))
            for s, d in enumerate(dirs[name])
        ]
    summary = summarise(runs)
    table = markdown_table(summary)
    per_class = per_class_table(summary, "dice")
    volume = per_class_table(summary, "volume_dice")
    tasks, recall = task_table(summary), task_table(summary, per_class=True)
    report = "\n\n".join(
        x
        for x in (
            table,
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
    grid = _qualitative(dirs, data, out / "qualitative.png", grid_samples)
    return {"table": report, "results": out / "results.json", "curves": curves, "qualitative": grid}


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
