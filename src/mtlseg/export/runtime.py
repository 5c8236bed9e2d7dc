"""``mtlseg predict --model FILE.onnx``: masks through onnxruntime, without Lightning.

Files are read as ``mtlseg predict`` reads them (``mtlseg.data.io``) and written the same
way (PNG for 2D, NIfTI with the input's affine for volumes); the graph does the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mtlseg.data.io import (
    NIFTI_ENDINGS,
    check_finite,
    file_ending,
    input_files,
    read_volume,
    stem,
    write_mask,
)
from mtlseg.errors import DataError, MtlsegError

METADATA_KEY = "mtlseg"


def load_session(path: Path) -> tuple[Any, dict[str, Any]]:
    """An onnxruntime session on ``path`` and the metadata mtlseg embedded in it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MtlsegError(
            "predicting with an ONNX model needs onnxruntime: pip install 'mtlseg[export]'"
        ) from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for unreadable files
        raise MtlsegError(f"{path}: not a readable ONNX model ({err})") from None
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise MtlsegError(f"{path}: not exported by mtlseg (no {METADATA_KEY!r} metadata)")
    return session, json.loads(props[METADATA_KEY])


def predict_onnx(model: Path | str, input_path: Path | str, out_dir: Path | str) -> list[Path]:
    """Masks for every image/volume under ``input_path`` at each file's own size."""
    from mtlseg.data.loading import normalise

    session, meta = load_session(Path(model))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = len(meta["classes"]) == 2
    written = []
    for path in input_files(Path(input_path)):
        image, affine = read_volume(path)  # (Z, H, W, C)
        check_finite(image, path)
        volume = file_ending(path) in NIFTI_ENDINGS and image.shape[0] > 1
        if meta["normalization_in_graph"] and volume:
            raise MtlsegError(
                f"{path}: a volume; this model normalises each image in its graph, while "
                "mtlseg normalises a volume as a whole: re-export it with "
                "--normalization outside for volumes"
            )
        if image.shape[-1] != meta["in_channels"]:
            raise DataError(
                f"{path}: {image.shape[-1]} channel(s), the model takes {meta['in_channels']}"
            )
        if meta["normalization_in_graph"]:
            x = image.astype(np.float32)
        else:
            x = normalise(image, meta["normalization"])
        labels = np.concatenate(
            [
                session.run(["labels"], {"image": np.ascontiguousarray(s.transpose(0, 3, 1, 2))})[0]
                for s in np.array_split(x, max(1, len(x) // 32 + 1))
                if len(s)
            ]
        )
        written.append(
            write_mask(labels, path, stem(path).removesuffix("_0000"), affine, out_dir, binary)
        )
    return written
