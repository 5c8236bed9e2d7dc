"""Load a trained model from a checkpoint; evaluate it on a split; predict masks for files.

Every path runs the one predictor, ``MultiTaskModule.segment``: ``evaluate`` at the
training size through validation's own ``score_batch``, ``evaluate_cases`` and ``predict``
on files at their own size through ``mtlseg.engine.batched``."""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mtlseg.config import DataConfig
from mtlseg.data.io import (
    input_files,
    read_volume,
    voxel_spacing,
    write_mask,
)
from mtlseg.data.loading import MaskDecoder
from mtlseg.data.sources import CaseRecord, DatasetIndex, discover
from mtlseg.data.volumes import VolumeDataset
from mtlseg.engine.batched import Entry, file_entries, predictions
from mtlseg.engine.checkpoint import load_checkpoint, writable_dir
from mtlseg.engine.data import PreparedData, prepare_data
from mtlseg.engine.module import MultiTaskModule
from mtlseg.errors import DataError, MtlsegError
from mtlseg.metrics import score_case, summarise

log = logging.getLogger(__name__)


def load_module(ckpt_path: Path | str, device: str = "cpu") -> MultiTaskModule:
    """Rebuild the module from the hyper-parameters stored in the checkpoint, load weights."""
    ckpt = load_checkpoint(Path(ckpt_path))
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise MtlsegError(f"{ckpt_path}: not an mtlseg checkpoint (no hyper_parameters/state_dict)")
    hparams = dict(ckpt["hyper_parameters"])
    params = hparams["config"].get("model", {}).get("params", {})
    if params.get("weights"):  # the trained weights follow; the pretrained file is not needed
        hparams["config"] = {
            **hparams["config"],
            "model": {**hparams["config"]["model"], "params": {**params, "weights": None}},
        }
    for task in hparams["config"]["tasks"]:  # written before params were resolved, when
        if task["kind"] == "segmentation" and "deep_supervision" not in task.get("params", {}):
            task["params"] = {**task.get("params", {}), "deep_supervision": 0}  # 0 was the default
    module = MultiTaskModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval().to(device)


def _module(ckpt: Path | str | MultiTaskModule, device: str = "cpu") -> MultiTaskModule:
    """A loaded module as it is, or the module of a checkpoint file."""
    return ckpt if isinstance(ckpt, MultiTaskModule) else load_module(ckpt, device)


@torch.no_grad()
def evaluate(
    ckpt_path: Path | str | MultiTaskModule,
    data_path: str,
    split: str = "val",
    data: PreparedData | None = None,
) -> dict:
    """Metrics of a checkpoint at the training size on a split (the one recorded at
    training) of ``data_path``, exactly as validation computes them (``score_batch``, the
    same predictor and metric code), with the auxiliary tasks' metrics and mean losses
    (``task/<name>/loss``).

    ``data``: the data the run was trained on, when the caller holds it, to skip re-reading it.
    ``ckpt_path`` may be a module already loaded (``load_module``).
    """
    module = _module(ckpt_path)
    recorded = module.hparams.get("split")
    if not recorded or split not in recorded:
        raise MtlsegError(
            f"{ckpt_path}: split {split!r} is not recorded in the checkpoint (have: {sorted(recorded or {})})"
        )
    if data is None:
        cfg = dataclasses.replace(module.cfg.data, path=str(data_path), augment="none")
        data = prepare_data(cfg, split=recorded)
    dataset = data.train if split == "train" else data.val
    ids = sorted({m["case_id"] for m in dataset.meta})
    module.case_index = {c: i for i, c in enumerate(ids)}
    device = next(module.parameters()).device
    batch_size = 1 if isinstance(dataset, VolumeDataset) else 32  # volumes differ in depth
    sums: dict[str, float] = {}
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        for name, loss in module.score_batch(batch).items():
            sums[name] = sums.get(name, 0.0) + float(loss) * len(batch["image"])
    result = module.compute_scores()
    result.update({f"task/{name}/loss": total / len(dataset) for name, total in sums.items()})
    result["num_samples"] = len(dataset)
    result["num_cases"] = len(ids)
    return result


def predict(
    ckpt_path: Path | str,
    input_path: Path | str,
    out_dir: Path | str,
    batch_size: int = 32,
    num_workers: int | None = None,
    tta: bool = False,
    progress: bool = False,
    device: str = "auto",
) -> list[Path]:
    """Masks for every image/volume under ``input_path``, at each file's own size: PNG for 2D
    (binary as 0/255, otherwise class indices), NIfTI with the input's affine for volumes.
    Files are read in ``num_workers`` background workers (None: ``default_readers()``) and
    their slices batched together (``mtlseg.engine.batched``); ``tta`` averages with the
    horizontal mirror."""
    module = load_module(ckpt_path, _device(device))
    out_dir = Path(out_dir)
    writable_dir(out_dir)
    binary = len(module.class_names) == 2
    entries = file_entries(input_files(Path(input_path)))
    # masks are encoded and written in a thread (zlib and file I/O release the GIL) while
    # the next batch runs through the model
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = [
            writer.submit(
                write_mask, labels, item["file"], item["name"], item["affine"], out_dir, binary
            )
            for item, labels in predictions(
                module, entries, None, batch_size, num_workers, tta, progress
            )
        ]
        return [f.result() for f in pending]


def _device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


EVAL_SPLITS = ("train", "val", "all", "test")


def evaluate_cases(
    ckpt_path: Path | str | MultiTaskModule,
    data_path: str,
    split: str = "all",
    with_hd95: bool = True,
    batch_size: int = 32,
    num_workers: int | None = None,
    tta: bool = False,
    progress: bool = False,
    device: str = "auto",
    empty: str | None = None,
) -> tuple[list[dict], dict]:
    """Per-case scores of a checkpoint at the data's own resolution (predictions resized back
    to each image's size; HD95 in the volume's spacing for NIfTI), and their summary, by the
    protocol of ``mtlseg.metrics.segmentation``.

    ``split``: ``train``/``val`` the cases of the split recorded at training; ``all`` every
    case of the dataset, whatever the model was trained on; ``test`` nnU-Net's
    ``imagesTs``/``labelsTs``. The data's classes must be the checkpoint's. ``empty``: the
    empty-class convention (None: the run's ``metrics.empty``). ``ckpt_path`` may be a
    module already loaded (``load_module``).
    """
    if split not in EVAL_SPLITS:
        raise MtlsegError(f"split {split!r}: expected one of {', '.join(EVAL_SPLITS)}")
    module = _module(ckpt_path, _device(device))
    cfg = dataclasses.replace(module.cfg.data, path=str(data_path), augment="none")
    index = discover(cfg.path, cfg.format, subset="Ts" if split == "test" else "Tr")
    records = index.cases
    if split in ("train", "val"):
        recorded = module.hparams.get("split") or {}
        if split not in recorded:
            raise MtlsegError(
                f"{ckpt_path}: split {split!r} is not recorded in the checkpoint; "
                "use --split all to score every case of the data"
            )
        wanted = set(recorded[split])
        records = [r for r in records if r.case_id in wanted]
        missing = sorted(wanted - {r.case_id for r in records})
        if missing:
            raise DataError(
                f"{index.root}: {len(missing)} case(s) of the recorded {split!r} split are not "
                f"in this dataset (e.g. {missing[:3]}); use --split all for other data"
            )
    unmasked = [r.case_id for r in records if r.label_file is None]
    if unmasked:  # nothing to score them against
        log.info("%s: %d image(s) without a mask are not scored", index.root, len(unmasked))
        records = [r for r in records if r.label_file is not None]
    decoder = mask_decoder(index, cfg, records)
    if decoder.class_names != module.class_names:
        raise DataError(
            f"{index.root}: classes {decoder.class_names} differ from the checkpoint's "
            f"{module.class_names} (set data.num_classes / data.mask_mode, or check the labels)"
        )
    entries = [Entry(r.case_id, r.image_files, r.label_file) for r in records]
    ignore = module.seg_task.params.ignore_index
    empty = empty or module.cfg.metrics.empty
    rows = []
    for item, pred in predictions(module, entries, decoder, batch_size, num_workers, tta, progress):
        truth = item["label"]
        volume = truth.shape[0] > 1
        row = {"case": item["name"]}
        row.update(
            score_case(
                pred if volume else pred[0],
                truth if volume else truth[0],
                module.class_names,
                voxel_spacing(item["affine"], 3 if volume else 2),
                with_hd95,
                ignore,
                empty,
            )
        )
        rows.append(row)
    return rows, summarise(rows, module.class_names, ignore, empty)


def mask_decoder(index: DatasetIndex, cfg: DataConfig, records: list[CaseRecord]) -> MaskDecoder:
    """The mask decoder of the data; reads the masks first only when it must infer the mode
    or the number of classes from their values."""
    needs_values = index.label_values is None and not (
        cfg.mask_mode == "binary" or (cfg.mask_mode == "auto" and index.lossy_masks)
    )
    raw = (
        {r.case_id: read_volume(r.label_file)[0] for r in records if r.label_file is not None}
        if needs_values
        else {}
    )
    return MaskDecoder(index, cfg, raw)
