"""The ``mtlseg`` command: parse arguments, build from config, call engine/report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

from mtlseg.errors import Interrupted, MtlsegError

DESCRIPTION = """\
mtlseg trains medical image segmentation networks together with auxiliary tasks (HOG
pseudo-labels, slice position, contrastive, class presence, depth, semi-supervised
consistency on unlabelled images, ...) and reports, against the single-task baseline on the
same split and seeds, whether the auxiliary task helped."""

EXAMPLES = """\
examples:
  mtlseg demo                                    unet vs unet-hog on Kvasir-SEG (downloads it)
  mtlseg download kvasir-seg --resize 256        fetch a public dataset (--list: all)
  mtlseg train --recipe unet-hog --data DIR --out runs/hog
  mtlseg compare --recipes unet unet-hog --data DIR --seeds 3 --out runs/cmp
  mtlseg predict --ckpt runs/hog/checkpoints/last.ckpt --input images/ --out masks/
  mtlseg export --ckpt runs/hog/checkpoints/last.ckpt --format onnx --out model.onnx

`mtlseg COMMAND --help` gives each command's options."""

DEMO_DATASET = "kvasir-seg"


def _quiet_libraries() -> None:
    """Keep the terminal readable: library deprecation chatter is not the user's business."""
    os.environ.setdefault("LITLOGGER_DISABLE_TIP", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for pattern in (
        ".*treespec.*",
        ".*does not have many workers.*",
        ".*ckpt_path.*",
        ".*litlogger.*",
        ".*is not resumable.*",
        ".*ended before the epoch ended.*",  # mtlseg skips the trained batches (ResumableBatches)
        ".*num_workers.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def cmd_recipes(args: argparse.Namespace) -> None:
    from mtlseg.config import recipe_names
    from mtlseg.settings import load_config

    for name in recipe_names():
        cfg = load_config(name, args.set)
        text = " ".join(cfg.description.split())
        print(textwrap.fill(text, 100, initial_indent=f"{name:24s} ", subsequent_indent=" " * 25))
        if args.verbose:
            from mtlseg.engine.module import parameter_counts

            counts = parameter_counts(cfg, args.channels, args.classes)
            print(
                f"{'':24s} parameters ({args.channels}-channel input, {args.classes} classes): "
                + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())
            )


def cmd_train(args: argparse.Namespace) -> None:
    from mtlseg.engine.train import train
    from mtlseg.settings import load_config

    overrides = [*args.set, f"data.path={args.data}"]
    if args.auto_lr and not args.resume:
        from mtlseg.engine.lr_find import find_lr

        found = find_lr(load_config(args.recipe, overrides), Path(args.out) / "lr_find")
        print(f"learning-rate finder suggests {found.suggestion:.3g} (curve: {found.plot})")
        overrides.append(f"train.lr={found.suggestion}")
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    result = train(load_config(args.recipe, overrides), Path(args.out), resume=args.resume)
    if getattr(rank_zero_only, "rank", 0) != 0:  # DDP: every process runs this; the first reports
        return
    score = f"{result.best_val_dice:.4f}" if result.best_val_dice is not None else "n/a"
    print(
        f"best val Dice {score}; checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)"
    )
    out = result.out_dir
    written = [out / "config.yaml", out / "splits.json", out / "logs" / "metrics.csv"]
    written += [p for p in (out / "tb", out / "logs" / "mlflow.json") if p.exists()]
    print("also written: " + ", ".join(str(p) for p in written))


def cmd_lr_find(args: argparse.Namespace) -> None:
    from mtlseg.engine.lr_find import find_lr
    from mtlseg.settings import load_config

    cfg = load_config(args.recipe, [*args.set, f"data.path={args.data}"])
    found = find_lr(cfg, Path(args.out), args.steps, args.min_lr, args.max_lr)
    print(
        f"suggested learning rate: {found.suggestion:.3g} (use --set train.lr={found.suggestion:.3g})"
        f"\ncurve: {found.plot}\nfigures: {found.record}"
    )


def _inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32, help="slices per forward pass")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="background file readers (default: none on <= 2 CPU cores, else half, at most 4)",
    )
    p.add_argument("--tta", action="store_true", help="average with the horizontal mirror")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _empty_arg(p: argparse.ArgumentParser, default: str) -> None:
    from mtlseg.conventions import EMPTY_CONVENTIONS

    p.add_argument(
        "--empty",
        choices=EMPTY_CONVENTIONS,
        default=None if "run" in default else "exclude",
        help="a class in neither prediction nor truth of a case: exclude (undefined, left out; "
        f"nnU-Net), one, or zero (paper 001); default: {default}",
    )


def _inference_kwargs(args: argparse.Namespace) -> dict:
    """The options ``_inference_args`` adds, as keyword arguments of predict/evaluate_cases."""
    return {
        "batch_size": args.batch_size,
        "num_workers": args.workers,
        "tta": args.tta,
        "progress": not args.no_progress,
        "device": args.device,
    }


def _print_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")


def _write_case_scores(out: str | None, metrics: dict, rows: list[dict], summary: dict) -> None:
    """``out`` (a .json): the flat metrics; beside it ``<stem>_cases.json`` and ``.csv``."""
    from mtlseg.metrics.cases import without_nan, write_scores

    if not out:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(without_nan({**metrics, "protocol": summary["protocol"]}), indent=1))
    _, cases_csv = write_scores(rows, summary, path.with_name(path.stem + "_cases.json"))
    print(f"metrics written to {path}; per case: {cases_csv}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mtlseg.engine.inference import evaluate, evaluate_cases
    from mtlseg.metrics.cases import format_summary

    metrics = {}
    if args.split in ("train", "val"):  # also the aux tasks' metrics, at the training size
        metrics = evaluate(args.ckpt, args.data, args.split)
        print("at the training size (as compare reports):")
        _print_metrics(metrics)
    rows, summary = evaluate_cases(
        args.ckpt,
        args.data,
        args.split,
        with_hd95=not args.no_hd95,
        empty=args.empty,
        **_inference_kwargs(args),
    )
    print(f"per case at the data's own resolution ({args.split}):")
    print(format_summary(summary))
    for key, s in summary["metrics"].items():
        metrics[f"native/{key}"] = s["mean"]
    metrics["native/num_cases"] = summary["num_cases"]
    _write_case_scores(args.out, metrics, rows, summary)


def cmd_evaluate_folder(args: argparse.Namespace) -> None:
    from mtlseg.metrics.cases import evaluate_folder, format_summary

    rows, summary = evaluate_folder(
        args.pred, args.gt, args.labels, with_hd95=not args.no_hd95, empty=args.empty
    )
    print(format_summary(summary))
    flat = {k: s["mean"] for k, s in summary["metrics"].items()}
    _write_case_scores(args.out, {**flat, "num_cases": summary["num_cases"]}, rows, summary)


def cmd_predict(args: argparse.Namespace) -> None:
    if args.model:
        from mtlseg.export.runtime import predict_onnx

        if args.tta:
            raise MtlsegError("--tta is not in an exported graph; predict with --ckpt for it")
        written = predict_onnx(args.model, args.input, args.out)
        print(f"{len(written)} mask(s) written to {args.out} (onnxruntime)")
        return
    from mtlseg.engine.inference import predict

    written = predict(
        args.ckpt,
        args.input,
        args.out,
        **_inference_kwargs(args),
    )
    print(f"{len(written)} mask(s) written to {args.out}")


def cmd_compare(args: argparse.Namespace) -> None:
    from mtlseg.report.compare import compare, compare_budgets, grid_points

    if args.pairs and not args.grid:
        raise MtlsegError("--pairs pairs the values of --grid keys; give --grid too")
    options = {
        "weightings": args.weightings,
        "single_task": args.single_task,
        "grid": grid_points(args.grid, args.pairs),
    }
    if args.label_budgets:
        sweep = compare_budgets(
            args.recipes,
            args.data,
            args.seeds,
            Path(args.out),
            args.label_budgets,
            args.set,
            **options,
        )
        print(sweep.table)
        print(f"\nefficiency: {sweep.efficiency}")
        return
    result = compare(args.recipes, args.data, args.seeds, Path(args.out), args.set, **options)
    print(result.table + "\n")
    for label, path in result.files():
        print(f"{label}: {path}")


def cmd_study_run(args: argparse.Namespace) -> None:
    from mtlseg.study.runner import run_study
    from mtlseg.study.spec import load_study
    from mtlseg.study.store import Store

    if args.parallel < 1 or (args.max_runs is not None and args.max_runs < 0):
        raise MtlsegError("--parallel takes 1 or more lanes, --max-runs 0 or more runs")
    study = load_study(args.study, args.data)
    done = run_study(
        study,
        Store(args.store, study.name),
        Path(args.work),
        max_minutes=args.max_minutes,
        max_runs=args.max_runs,
        parallel=args.parallel,
        say=lambda line: print(line, flush=True),
        lane_budget=Path(args.lane_budget) if args.lane_budget else None,
        launcher=args.launcher,
        launcher_options=dict(_key_value(x) for x in args.launcher_set),
    )
    if args.lane_budget:
        return
    print(f"study {study.name}: {len(done.trained)} run(s) recorded; stopped: {done.stopped}")
    if done.interrupted:
        print(f"interrupted: {done.interrupted} (the same command resumes it on this machine)")


def _key_value(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise MtlsegError(f"--launcher-set {text!r}: expected KEY=VALUE, e.g. slurm_partition=gpu")
    return key, yaml.safe_load(value)


def cmd_study_report(args: argparse.Namespace) -> None:
    from mtlseg.study.pages import update_page
    from mtlseg.study.report import build_report, draw_figures, render
    from mtlseg.study.spec import load_study
    from mtlseg.study.store import Store

    study = load_study(args.study, args.data)
    records = Store(args.store, study.name).records()
    text = render(build_report(study, records))
    if args.figures:
        for path in draw_figures(study, records, Path(args.figures)):
            print(f"figure: {path}")
    page = Path(args.page) if args.page else study.page
    if page is None:
        print(text, end="")
        return
    changed = update_page(page, study.name, text, check=args.check)
    if args.check and changed:
        raise MtlsegError(
            f"{page}: the table of study {study.name} differs from what its records give; "
            f"run `mtlseg study report {args.study} --page {page}`"
        )
    print(f"{page}: {'updated' if changed else 'up to date'}")


def cmd_check_data(args: argparse.Namespace) -> None:
    from mtlseg.data.loading import load_dataset
    from mtlseg.data.sources import discover
    from mtlseg.data.splits import PATIENT_HINT, resolve_split
    from mtlseg.settings import load_config

    cfg = load_config("unet", [*args.set, f"data.path={args.data}"]).data
    dataset, source = None, ""
    try:
        index = discover(cfg.path, cfg.format)
    except MtlsegError as err:
        problems = str(err).splitlines()
        index = None
    if index is not None:
        dataset, problems = load_dataset(index, cfg)
        if dataset is not None and not problems:
            try:
                patients = {c.case_id: c.meta.patient_id for c in dataset.cases}
                _, source = resolve_split(index.root, patients, cfg, index.split)
            except MtlsegError as err:
                problems.append(str(err))
    for line in problems:
        print(line)
    if problems or index is None or dataset is None:
        raise SystemExit(f"{len(problems)} problem(s) found in {args.data}")
    n_slices = sum(c.image.shape[0] for c in dataset.cases)
    print(
        f"ok: {len(dataset.cases)} cases, {n_slices} slices, {dataset.in_channels} channel(s), "
        f"classes {dataset.class_names}, format {index.format}, split: {source}"
    )
    if "split by image" in source:
        print(f"note: {PATIENT_HINT}")


def demo_data(explicit: str | None, allow_download: bool = True) -> Path:
    """The demo's Kvasir-SEG: in ``--data`` when it is given, else in ``$MTLSEG_DATA``,
    ``../shared/data`` or the cache folder; where there is none, downloaded (into ``--data``,
    else the cache; at 256 px, the size the documented demo used)."""
    from mtlseg.download import default_data_root, download

    roots: list[str | None] = [explicit]  # the folder the user named, and no other
    if not explicit:
        roots = [os.environ.get("MTLSEG_DATA"), "../shared/data", str(default_data_root())]
        roots.append(str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    for root in roots:
        if root and (Path(root) / DEMO_DATASET).is_dir():
            return Path(root) / DEMO_DATASET
    dest = Path(explicit) if explicit else default_data_root()
    if not allow_download:
        raise MtlsegError(
            f"no {DEMO_DATASET} in {', '.join(r for r in roots if r)}; run "
            f"`mtlseg download {DEMO_DATASET} --resize 256 --dest {dest}` or drop --no-download"
        )
    print(f"demo: {DEMO_DATASET} not found; downloading it to {dest} (about 46 MB, once)")
    return download(DEMO_DATASET, dest, resize=256)


def cmd_demo(args: argparse.Namespace) -> None:
    """unet vs unet-hog on Kvasir-SEG, short enough for ~10 minutes on 2 CPU cores."""
    from mtlseg.report.compare import compare

    data = demo_data(args.data, allow_download=not args.no_download)
    overrides = [
        f"train.max_steps={args.steps}",
        f"train.val_every={max(1, args.steps // 4)}",
        "data.image_size=96",
        "train.batch_size=8",
        "train.progress_bar=false",
        *args.set,
    ]
    print(
        f"demo: unet vs unet-hog on {data}, {args.steps} steps x {args.seeds} seed(s) -> {args.out}"
    )
    result = compare(["unet", "unet-hog"], str(data), args.seeds, Path(args.out), overrides)
    print("\n" + result.table + "\n")
    for label, path in result.files():
        print(f"{label}: {path}")


def cmd_download(args: argparse.Namespace) -> None:
    from mtlseg.download import DATASETS, default_data_root, download

    if args.list or not args.name:
        for name, spec in DATASETS.items():
            print(f"{name:20s} {spec.description}")
        if not args.list:
            print("\nmtlseg download NAME [--dest DIR]")
        return
    dest = Path(args.dest) if args.dest else default_data_root()
    download(
        args.name,
        dest,
        url=args.url,
        sha256=args.sha256,
        resize=args.resize,
        force=args.force,
        progress=not args.no_progress and sys.stderr.isatty(),  # no bar in a log file
    )


def cmd_export(args: argparse.Namespace) -> None:
    from mtlseg.export import export

    meta = export(args.ckpt, args.format, args.out, args.normalization, args.verbose)
    print(
        f"{args.out}: {args.format}, {meta['recipe']}, classes {meta['classes']}, "
        f"input (B, {meta['in_channels']}, H, W) "
        f"{'raw' if meta['normalization_in_graph'] else 'normalised'}; "
        f"in the graph: {', '.join(meta['in_graph'])}"
    )


def _with_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. train.max_steps=100 (repeatable)",
    )


def _recipes_args(p: argparse.ArgumentParser) -> None:
    _with_set(p)
    p.add_argument("--verbose", action="store_true", help="also count each model's parameters")
    p.add_argument("--channels", type=int, default=3, help="input channels assumed for counting")
    p.add_argument("--classes", type=int, default=2, help="segmentation classes (background too)")


def _train_args(p: argparse.ArgumentParser) -> None:
    _with_set(p)
    p.add_argument(
        "--recipe", required=True, help="recipe name (see `mtlseg recipes`) or YAML file"
    )
    p.add_argument("--data", required=True, help="dataset folder (images/+masks/ or nnU-Net raw)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument(
        "--auto-lr",
        action="store_true",
        help="run Lightning's learning-rate finder first and train with its suggestion",
    )


def _lr_find_args(p: argparse.ArgumentParser) -> None:
    _with_set(p)
    p.add_argument("--recipe", required=True, help="recipe name or YAML file")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--out", required=True, help="folder for lr_find.png and lr_find.json")
    p.add_argument("--steps", type=int, default=100, help="training steps of the range test")
    p.add_argument("--min-lr", type=float, default=1e-6, help="the range's lowest rate")
    p.add_argument("--max-lr", type=float, default=1.0, help="the range's highest rate")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="an mtlseg checkpoint (.ckpt)")
    p.add_argument("--data", required=True, help="the dataset to score it on")
    p.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "all", "test"],
        help="train/val: the split recorded at training; all: every case of DATA; "
        "test: nnU-Net's imagesTs/labelsTs",
    )
    p.add_argument("--out", help="write the metrics as JSON here, per case beside it")
    p.add_argument("--no-hd95", action="store_true", help="skip the (slow) Hausdorff distance")
    _empty_arg(p, "the run's metrics.empty (default exclude)")
    _inference_args(p)


def _evaluate_folder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, help="predicted masks (PNG/TIFF/NIfTI)")
    p.add_argument("--gt", required=True, help="ground-truth masks with the same file stems")
    p.add_argument("--labels", help="nnU-Net dataset.json naming the classes")
    p.add_argument("--out", help="write the summary as JSON here, per case beside it")
    p.add_argument("--no-hd95", action="store_true", help="skip the (slow) Hausdorff distance")
    _empty_arg(p, "exclude")


def _predict_args(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="an mtlseg checkpoint")
    source.add_argument(
        "--model", help="an ONNX file from `mtlseg export` (runs in onnxruntime, no Lightning)"
    )
    p.add_argument("--input", required=True, help="an image/NIfTI file or a folder of them")
    p.add_argument("--out", required=True, help="folder for the predicted masks")
    _inference_args(p)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="an mtlseg checkpoint (.ckpt)")
    p.add_argument("--format", required=True, help="onnx or torch-export (torch.export's program)")
    p.add_argument("--out", required=True, help="the file to write (.onnx, .pt2)")
    p.add_argument(
        "--normalization",
        choices=["graph", "outside"],
        default="graph",
        help="graph: the file takes raw images and normalises each (2D images); outside: it "
        "takes normalised images (volumes, which mtlseg normalises per case)",
    )
    p.add_argument("--verbose", action="store_true", help="show the exporters' own messages")


def _compare_args(p: argparse.ArgumentParser) -> None:
    _with_set(p)
    p.add_argument("--recipes", nargs="+", required=True, help="the first one is the baseline")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of every recipe (default 3)")
    p.add_argument("--out", required=True, help="folder for the runs, their records and the tables")
    p.add_argument(
        "--weightings",
        nargs="+",
        metavar="KIND",
        help="run each multi-task recipe once per weighting.kind (rows <recipe>+<kind>)",
    )
    p.add_argument(
        "--single-task",
        action="store_true",
        help="also train each auxiliary task alone: the baselines of delta-M (lower is better)",
    )
    p.add_argument(
        "--grid",
        nargs="+",
        metavar="KEY=V1,V2",
        help="sweep: every recipe after the first (the baseline) runs once per value; several "
        "keys: their product; quote list values ('model.params.channels=[8,16],[16,32]'); "
        "or one YAML file holding a list of KEY: VALUE mappings (explicit combinations)",
    )
    p.add_argument(
        "--label-budgets",
        nargs="+",
        metavar="B",
        help="run the whole comparison once per data.label_budget (a count, a fraction, all), "
        "in OUT/budget-B/, and draw efficiency.png (Dice against the labelled count)",
    )
    p.add_argument(
        "--pairs",
        action="store_true",
        help="take the --grid keys' values side by side (the i-th of each) instead of their product",
    )


def _study_common_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("study", help="the study file (YAML)")
    q.add_argument("--data", help="the dataset, replacing the study file's data")
    q.add_argument("--store", default="results", help="the results store folder (default: results)")


def _study_run_args(q: argparse.ArgumentParser) -> None:
    _study_common_args(q)
    q.add_argument(
        "--work",
        default="runs/studies",
        help="where run folders and checkpoints go (default: runs/studies)",
    )
    q.add_argument("--parallel", type=int, default=1, help="runs at a time, one thread each")
    q.add_argument("--max-runs", type=int, help="stop after this many runs")
    q.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this many minutes, between runs or mid-run (resumable)",
    )
    q.add_argument(
        "--launcher",
        choices=("local", "submitit"),
        default="local",
        help="local: lanes are processes here; submitit: lanes are scheduler jobs "
        "(SLURM where sbatch is found, else local; pip install 'mtlseg[slurm]')",
    )
    q.add_argument(
        "--launcher-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a submitit executor parameter, e.g. slurm_partition=gpu (repeatable)",
    )
    q.add_argument("--lane-budget", help=argparse.SUPPRESS)


def _study_report_args(q: argparse.ArgumentParser) -> None:
    _study_common_args(q)
    q.add_argument(
        "--page",
        help="write the tables between the study's markers in this page (default: the "
        "study's page, else print them)",
    )
    q.add_argument("--figures", help="also draw curves-<budget>.png and efficiency.png here")
    q.add_argument(
        "--check",
        action="store_true",
        help="fail when the page differs from the records, write nothing",
    )


def _check_data_args(p: argparse.ArgumentParser) -> None:
    _with_set(p)
    p.add_argument("data", help="dataset folder")


def _download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="dataset name (see --list)")
    p.add_argument("--list", action="store_true", help="list the datasets mtlseg knows")
    p.add_argument(
        "--dest",
        help="data folder that gets NAME/ (default: $MTLSEG_DATA, else ~/.cache/mtlseg/data)",
    )
    p.add_argument("--url", help="download from this address instead (a mirror)")
    p.add_argument("--sha256", help="expected SHA-256 of the archive (with --url)")
    p.add_argument(
        "--resize",
        type=int,
        metavar="PX",
        help="2D images: store at PX x PX (the demo uses 256, the shared copy's size)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing folder NAME/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _demo_args(p: argparse.ArgumentParser) -> None:
    _with_set(p)
    p.add_argument(
        "--data",
        help="folder holding kvasir-seg/ (default: $MTLSEG_DATA, ../shared/data, the cache; "
        "downloaded there when absent)",
    )
    p.add_argument(
        "--no-download", action="store_true", help="fail instead of downloading Kvasir-SEG"
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, default=1000, help="training steps per run (default 1000)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per recipe (default 1)")


# a command: (name, help, what adds its arguments, what runs it; None: its actions do)
Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., None] | None]
STUDY_ACTIONS: list[Command] = [
    ("run", "train and record every run the study still lacks", _study_run_args, cmd_study_run),
    ("report", "the study's tables from its records", _study_report_args, cmd_study_report),
]


def _study_args(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    for action, text, add_args, func in STUDY_ACTIONS:
        q = actions.add_parser(action, help=text, description=text)
        add_args(q)
        q.set_defaults(func=func)


COMMANDS: list[Command] = [
    ("recipes", "list the shipped recipes", _recipes_args, cmd_recipes),
    ("train", "train a recipe on a dataset", _train_args, cmd_train),
    ("lr-find", "learning-rate range test (Lightning's finder)", _lr_find_args, cmd_lr_find),
    (
        "evaluate",
        "metrics of a checkpoint on a split or on any data",
        _evaluate_args,
        cmd_evaluate,
    ),
    (
        "evaluate-folder",
        "score a folder of predicted masks against ground truth",
        _evaluate_folder_args,
        cmd_evaluate_folder,
    ),
    ("predict", "predicted masks for images or volumes", _predict_args, cmd_predict),
    ("export", "a checkpoint as ONNX or a torch.export program", _export_args, cmd_export),
    ("compare", "train recipes x seeds on one split and compare", _compare_args, cmd_compare),
    ("study", "run a study file's missing runs, or report its tables", _study_args, None),
    ("check-data", "report every problem in a dataset", _check_data_args, cmd_check_data),
    ("download", "fetch a public dataset and lay it out for mtlseg", _download_args, cmd_download),
    ("demo", "short unet vs unet-hog comparison on real data", _demo_args, cmd_demo),
]


def build_parser() -> argparse.ArgumentParser:
    """mtlseg's parser: one subcommand per row of ``COMMANDS``, in the order ``--help``
    lists them."""
    from mtlseg import __version__

    parser = argparse.ArgumentParser(
        prog="mtlseg",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mtlseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text, add_args, func in COMMANDS:
        p = sub.add_parser(name, help=text)
        add_args(p)
        if func is not None:
            p.set_defaults(func=func)
    return parser


def continuation(argv: list[str]) -> str:
    """How to go on after Ctrl-C: the same command (``train`` with ``--resume``); the runs
    that ``compare``, ``study run`` and ``demo`` finished are kept and not trained again."""
    command = argv[0] if argv else ""
    line = shlex.join(["mtlseg", *argv])
    if command == "train":
        if "--resume" not in argv:
            line += " --resume"
        return f"continue with: {line}"
    if command in ("compare", "study", "demo"):
        return f"continue with: {line} (finished runs are kept)"
    return f"run it again: {line}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        args.func(args)
    except Interrupted as err:
        print(f"mtlseg: interrupted; {err.saved}; {continuation(argv)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"mtlseg: interrupted; {continuation(argv)}", file=sys.stderr)
        return 130
    except MtlsegError as err:
        print(f"mtlseg: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
