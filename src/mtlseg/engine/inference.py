"""Load a trained model from a checkpoint; evaluate it on a split; predict masks for files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from mtlseg.data.dataset import SliceDataset, resize_slices
from mtlseg.data.io import (
    IMAGE_ENDINGS,
    NIFTI_ENDINGS,
    check_finite,
    file_ending,
    read_volume,
    stem,
)
from mtlseg.data.loading import NORMALIZATIONS
from mtlseg.data.metadata import case_meta, require_fields
from mtlseg.data.volumes import VolumeDataset
from mtlseg.engine.checkpoint import load_checkpoint
from mtlseg.engine.data import PreparedData, prepare_data
from mtlseg.engine.module import MultiTaskModule
from mtlseg.errors import DataError, MtlsegError
from mtlseg.metrics import SegmentationMetrics


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
    seg = hparams["config"]["tasks"][0]
    if "deep_supervision" not in seg.get("params", {}):  # written before params were resolved,
        seg["params"] = {**seg.get("params", {}), "deep_supervision": 0}  # when 0 was the default
    module = MultiTaskModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval().to(device)


@torch.no_grad()
def segment_slices(
    module: MultiTaskModule,
    images: torch.Tensor,
    meta: torch.Tensor | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """(N, C, S, S) images [+ (N, F) metadata for FiLM] -> logits (N, K, S, S), in chunks."""
    device = next(module.parameters()).device
    chunks = []
    for i in range(0, len(images), batch_size):
        m = meta[i : i + batch_size].to(device) if meta is not None else None
        x = images[i : i + batch_size].to(device)
        chunks.append(module.model.segment(x, m).float().cpu())
    return torch.cat(chunks)


@torch.no_grad()
def predict_volume(module: MultiTaskModule, volume: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W, D) volume -> (1, H, W, D) class indices (sliding-window inference)."""
    device = next(module.parameters()).device
    return module.predict_labels(volume.to(device)).cpu()


def predict_dataset(module: MultiTaskModule, dataset: SliceDataset) -> torch.Tensor:
    """Class indices (N, S, S) for every slice of a dataset, with its metadata."""
    logits = segment_slices(module, dataset.images.float(), dataset.meta_values)
    return module.seg_task.decode(logits)


def evaluate(
    ckpt_path: Path | str,
    data_path: str,
    split: str = "val",
    with_hd95: bool = True,
    data: PreparedData | None = None,
) -> dict:
    """Full metrics of a checkpoint on a split (the one recorded at training) of ``data_path``.

    ``data``: the data the run was trained on, when the caller holds it, to skip re-reading it.
    """
    module = load_module(ckpt_path)
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
    index = {c: i for i, c in enumerate(ids)}
    ignore = module.seg_task.params.ignore_index
    metrics = SegmentationMetrics(data.class_names, with_hd95=with_hd95, ignore_index=ignore)
    if isinstance(dataset, VolumeDataset):  # per volume: 3D Dice, IoU, HD95
        for i, (image, mask) in enumerate(zip(dataset.images, dataset.masks, strict=True)):
            pred = predict_volume(module, image.float()[None])
            metrics.update(pred, mask[None].long(), torch.tensor([index[dataset.case_ids[i]]]))
    else:
        cases = torch.tensor([index[m["case_id"]] for m in dataset.meta])
        metrics.update(predict_dataset(module, dataset), dataset.masks.long(), cases)
    result = metrics.compute()
    result.update(evaluate_tasks(module, dataset))
    result["num_samples"] = len(dataset)
    result["num_cases"] = len(ids)
    return result


@torch.no_grad()
def evaluate_tasks(module: MultiTaskModule, dataset: SliceDataset, batch_size: int = 32) -> dict:
    """The auxiliary tasks on ``dataset``: ``task/<name>/loss`` (mean over samples) and each
    task's own metrics (``task/<name>/<metric>``: accuracy, box IoU, ...)."""
    tasks = module.val_aux_tasks
    if not tasks:
        return {}
    module.eval()
    device = next(module.parameters()).device
    sums = dict.fromkeys((t.name for t in tasks), 0.0)
    if isinstance(dataset, VolumeDataset):
        batch_size = 1  # whole volumes of different depths
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        outputs = module.model(module.padded(batch["image"]), batch.get("meta"))
        for task in tasks:
            target = task.target(batch)
            sums[task.name] += float(task.loss(outputs[task.name], target)) * len(batch["image"])
            if task.name in module.task_metrics:
                module.task_metrics[task.name].update(
                    task.metric_input(outputs[task.name]), task.metric_target(target)
                )
    result = {f"task/{name}/loss": total / len(dataset) for name, total in sums.items()}
    result.update({f"task/{k}": float(v) for k, v in module.compute_task_metrics().items()})
    return result


def _input_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if file_ending(p) in IMAGE_ENDINGS + NIFTI_ENDINGS)
        if files:
            return files
        raise DataError(f"{path}: no image or NIfTI files to predict")
    raise DataError(f"{path}: input does not exist")


@torch.no_grad()
def predict_file(module: MultiTaskModule, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """One image/volume file -> (labels (Z, H, W) uint8 at the file's own size, affine)."""
    image, affine = read_volume(path)
    check_finite(image, path)
    expected = module.hparams["in_channels"]
    if image.shape[-1] != expected:
        raise DataError(
            f"{path}: {image.shape[-1]} channel(s), the model was trained on {expected}"
        )
    cfg = module.cfg.data
    meta = case_meta(stem(path).removesuffix("_0000"), image.shape, affine, cfg.case_pattern)
    values = torch.from_numpy(meta.slice_vectors())
    film = module.cfg.model.film
    if film is not None and film.missing == "error":
        require_fields(
            values.numpy(), [str(path)] * len(values), film.fields, "model.film", str(path)
        )
    image = NORMALIZATIONS.get(cfg.normalization)(image.astype(np.float32))
    x, _ = resize_slices(image, None, cfg.image_size)
    if module.volumetric:
        if image.shape[0] == 1:
            raise DataError(f"{path}: a 2D image; this model was trained on volumes (data.dims=3)")
        volume = x.permute(1, 2, 3, 0)[None]  # (1, C, S, S, Z)
        logits = module.segment(volume.to(next(module.parameters()).device)).float().cpu()
        size = (*image.shape[1:3], image.shape[0])
        logits = F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
        labels = module.seg_task.decode(logits)[0].permute(2, 0, 1)  # (Z, H, W)
        return labels.to(torch.uint8).numpy(), affine
    logits = segment_slices(module, x, values)
    logits = F.interpolate(logits, size=image.shape[1:3], mode="bilinear", align_corners=False)
    return module.seg_task.decode(logits).to(torch.uint8).numpy(), affine


def predict(ckpt_path: Path | str, input_path: Path | str, out_dir: Path | str) -> list[Path]:
    """Masks for every image/volume under ``input_path``: PNG for 2D (binary as 0/255,
    otherwise class indices), NIfTI with the input's affine for volumes."""
    import nibabel as nib
    from skimage import io as skio

    module = load_module(ckpt_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = len(module.class_names) == 2
    written = []
    for path in _input_files(Path(input_path)):
        labels, affine = predict_file(module, path)
        name = stem(path).removesuffix("_0000")
        if file_ending(path) in NIFTI_ENDINGS:
            target = out_dir / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(np.moveaxis(labels, 0, -1), affine), str(target))
        else:
            target = out_dir / f"{name}.png"
            skio.imsave(str(target), labels[0] * (255 if binary else 1), check_contrast=False)
        written.append(target)
    return written
