"""Checkpoint I/O: atomic writes (temp file + rename) and ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """A crash while saving never leaves a truncated checkpoint behind."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        save_atomic(checkpoint, Path(path))

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return load_checkpoint(Path(path), map_location)


def save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: Any = None) -> dict[str, Any]:
    from mtlseg.errors import MtlsegError

    if not path.is_file():
        raise MtlsegError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as err:
        raise MtlsegError(f"{path}: cannot load checkpoint ({type(err).__name__}: {err})") from None


def writable_dir(path: Path) -> None:
    """Create ``path`` and write a probe file there, so that an unwritable or full output
    folder is a clear error before any work starts, not after an hour of training."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".mtlseg-write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as err:
        from mtlseg.errors import MtlsegError

        raise MtlsegError(
            f"{path}: output folder is not writable ({err.strerror or err})"
        ) from None
