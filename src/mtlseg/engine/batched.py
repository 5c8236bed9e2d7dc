"""Batched inference over files of any size: read in DataLoader workers, slices of several
files in one forward pass, logits resized back to each file's own size.

``predict`` and ``evaluate`` (per case, at the data's own resolution) both run on it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mtlseg.data.dataset import model_input
from mtlseg.data.io import check_finite, read_volume, stem
from mtlseg.data.loading import MaskDecoder, read_case
from mtlseg.data.metadata import case_meta, require_fields
from mtlseg.data.sources import CaseRecord
from mtlseg.engine.module import MultiTaskModule
from mtlseg.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """What to read: a name, the image file(s) (one per channel group), a label file or None."""

    name: str
    image_files: list[Path]
    label_file: Path | None = None


class InferenceSet(Dataset):
    """Entries -> normalised slices at the model's input size, with what is needed to put
    the prediction back: the original (H, W), affine, and the decoded label if any."""

    def __init__(
        self, module: MultiTaskModule, entries: list[Entry], decoder: MaskDecoder | None
    ) -> None:
        self.entries, self.decoder = entries, decoder
        self.cfg = module.cfg.data
        self.channels = int(module.hparams["in_channels"])
        film = module.cfg.model.film
        self.film_fields = list(film.fields) if film is not None and film.missing == "error" else []

    def __len__(self) -> int:
        return len(self.entries)

    def _read(self, entry: Entry) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        if entry.label_file is not None:
            raw = read_case(CaseRecord(entry.name, entry.image_files, entry.label_file))
            assert raw.label is not None  # read with its label file
            label = self.decoder.decode(raw.label, entry.label_file) if self.decoder else raw.label
            return raw.image, raw.affine, label
        image, affine = read_volume(entry.image_files[0])
        check_finite(image, entry.image_files[0])
        return image, affine, None

    def __getitem__(self, i: int) -> dict:
        """The item, or {"error": message} for bad input: a DataError raised in a worker would
        reach the user wrapped in the worker's traceback."""
        try:
            return self._item(self.entries[i])
        except DataError as err:
            return {"error": str(err)}

    def _item(self, entry: Entry) -> dict:
        image, affine, label = self._read(entry)
        first = entry.image_files[0]
        if image.shape[-1] != self.channels:
            raise DataError(
                f"{first}: {image.shape[-1]} channel(s), the model was trained on {self.channels}"
            )
        meta = case_meta(entry.name, image.shape, affine, self.cfg.case_pattern).slice_vectors()
        if self.film_fields:
            require_fields(
                meta, [str(first)] * len(meta), self.film_fields, "model.film", str(first)
            )
        x = model_input(image, self.cfg.normalization, self.cfg.image_size)
        return {
            "name": entry.name,
            "file": first,
            "x": x,
            "meta": torch.from_numpy(meta),
            "size": tuple(image.shape[1:3]),
            "affine": affine,
            "label": label,
        }


def _as_is(item: Any) -> Any:
    """Items go through the DataLoader unbatched (files differ in size and slice count)."""
    return item


def default_readers() -> int:
    """Background file readers when none are asked for: none on two cores or fewer, where a
    reader process competes with the forward pass for the cores (benchmarks/predict_speed.py
    on 2 cores: 0.65x of forward-only with none, 0.43-0.52x with one), else half the cores,
    at most 4."""
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(4, cores // 2)


def _model_device(module: MultiTaskModule) -> torch.device:
    return next(module.parameters()).device


def _forward(
    module: MultiTaskModule, x: torch.Tensor, meta: torch.Tensor | None, tta: bool
) -> torch.Tensor:
    """The module's one predictor (``segment``), under float16 autocast on a GPU."""
    device = _model_device(module)
    with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
        return module.segment(x, meta, tta)


@torch.no_grad()
def predictions(
    module: MultiTaskModule,
    entries: list[Entry],
    decoder: MaskDecoder | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    tta: bool = False,
    progress: bool = False,
) -> Iterator[tuple[dict, np.ndarray]]:
    """Yield (item, labels (Z, H, W) uint8 at the item's own size) for every entry, in order.

    2D: slices of consecutive files are gathered into batches of ``batch_size`` slices.
    Volumetric models: one whole volume at a time (sliding window, ``module.segment``).
    """
    module.eval()
    device = _model_device(module)
    num_workers = default_readers() if num_workers is None else num_workers
    loader = DataLoader(
        InferenceSet(module, entries, decoder),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_as_is,
        prefetch_factor=4 if num_workers > 0 else None,
    )
    bar = _progress(len(entries), progress)
    pending: list[dict] = []
    for item in loader:
        if "error" in item:
            raise DataError(item["error"])
        pending.append(item)
        if module.spatial.whole_cases or sum(len(p["x"]) for p in pending) >= batch_size:
            yield from _flush(module, pending, batch_size, tta, device, bar)
            pending = []
    yield from _flush(module, pending, batch_size, tta, device, bar)
    if bar is not None:
        bar.close()


def _flush(
    module: MultiTaskModule,
    items: list[dict],
    batch_size: int,
    tta: bool,
    device: torch.device,
    bar: Any,
) -> Iterator[tuple[dict, np.ndarray]]:
    if not items:
        return
    if module.spatial.whole_cases:
        for item in items:
            x = item["x"]
            if x.shape[0] == 1:
                raise DataError(
                    f"{item['file']}: a 2D image; this model was trained on volumes (data.dims=3)"
                )
            logits = _forward(module, x.permute(1, 2, 3, 0)[None].to(device), None, tta).cpu()
            size = (*item["size"], x.shape[0])
            logits = F.interpolate(logits, size=size, mode="trilinear", align_corners=False)
            labels = module.seg_task.decode(logits)[0].permute(2, 0, 1)
            _tick(bar, 1, x.shape[0])
            yield item, labels.to(torch.uint8).numpy()
        return
    x = torch.cat([i["x"] for i in items])
    meta = torch.cat([i["meta"] for i in items])
    chunks = [
        _forward(
            module,
            x[s : s + batch_size].to(device),
            meta[s : s + batch_size].to(device) if module.model.film is not None else None,
            tta,
        ).cpu()
        for s in range(0, len(x), batch_size)
    ]
    logits = torch.cat(chunks).split([len(i["x"]) for i in items])
    for item, lg in zip(items, logits, strict=True):
        lg = F.interpolate(lg, size=item["size"], mode="bilinear", align_corners=False)
        _tick(bar, 1, len(lg))
        yield item, module.seg_task.decode(lg).to(torch.uint8).numpy()


class _Lines:
    """Progress as a plain line every tenth of the files, where a bar cannot draw (output
    that is not a terminal: a log file, a pipe)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.said, self.postfix = total, 0, 0, ""

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def update(self, n: int) -> None:
        self.done += n
        if self.done * 10 // max(self.total, 1) > self.said or self.done == self.total:
            self.said = self.done * 10 // max(self.total, 1)
            log.info("%d/%d files, %s", self.done, self.total, self.postfix)

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:  # a tqdm bar, lines, or None
    if not enabled:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar: Any = tqdm(total=total, unit="file", dynamic_ncols=True)
    else:
        bar = _Lines(total)
    bar.images, bar.start = 0, time.perf_counter()
    return bar


def _tick(bar: Any, files: int, images: int) -> None:
    if bar is None:
        return
    bar.images += images
    rate = bar.images / max(time.perf_counter() - bar.start, 1e-9)
    bar.set_postfix_str(f"{rate:.1f} images/s", refresh=False)
    bar.update(files)


def file_entries(paths: list[Path]) -> list[Entry]:
    """One entry per input file (nnU-Net's ``_0000`` channel suffix left off the name)."""
    return [Entry(stem(p).removesuffix("_0000"), [p]) for p in paths]
