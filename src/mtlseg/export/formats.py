"""``mtlseg export``: a checkpoint -> an ONNX file or a torch.export program, with metadata.

Both hold ``SegmentationGraph`` traced by ``torch.export`` with a dynamic batch, height and
width (the graph resizes every image to the training size, so any size is accepted)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtlseg.errors import ConfigError, MtlsegError
from mtlseg.export.graph import SegmentationGraph
from mtlseg.registry import Registry

if TYPE_CHECKING:
    from mtlseg.engine.module import MultiTaskModule

Writer = Callable[[torch.export.ExportedProgram, tuple, Path, dict[str, Any]], None]
FORMATS: Registry[Writer] = Registry("export format")
METADATA_KEY = "mtlseg"  # ONNX metadata_props key / torch.export extra file (mtlseg.json)


@FORMATS.register("onnx")
def write_onnx(
    program: torch.export.ExportedProgram, example: tuple, out: Path, metadata: dict[str, Any]
) -> None:
    """ONNX through torch's dynamo exporter (opset 18+: Resize with antialias)."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it)
    except ImportError:
        raise MtlsegError(
            "exporting to ONNX needs onnx and onnxscript: pip install 'mtlseg[export]'"
        ) from None

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's step-by-step progress
        onnx_program = torch.onnx.export(
            program,
            example,
            dynamo=True,
            verbose=False,
            input_names=["image"],
            output_names=["labels", "logits"],
        )
    assert onnx_program is not None
    model = onnx_program.model_proto
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(out))


@FORMATS.register("torch-export")
def write_torch_export(
    program: torch.export.ExportedProgram, example: tuple, out: Path, metadata: dict[str, Any]
) -> None:
    """torch.export's program (``torch.export.load``), not the deprecated TorchScript."""
    torch.export.save(program, str(out), extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})


def _exportable(module: Any) -> None:
    """What the graph cannot hold is refused with what to do instead."""
    if module.spatial.export_refusal is not None:
        raise MtlsegError(module.spatial.export_refusal)
    if module.model.film is not None:
        raise MtlsegError(
            "this model is FiLM-conditioned on per-slice metadata (model.film), which the "
            "exported graph has no input for; export a model without model.film"
        )


def metadata(module: MultiTaskModule, normalize: bool, fmt: str) -> dict[str, Any]:
    """What a user of the file needs to feed it and read its outputs."""
    from mtlseg import __version__

    cfg = module.cfg
    return {
        "mtlseg_version": __version__,
        "format": fmt,
        "recipe": cfg.name,
        "classes": list(module.class_names),
        "in_channels": int(module.hparams["in_channels"]),
        "input_size": int(cfg.data.image_size),
        "normalization": cfg.data.normalization,
        "normalization_in_graph": normalize,
        "input": "image (B, C, H, W) float32: "
        + ("raw pixel values as read (uint8 RGB as 0-255)" if normalize else "normalised"),
        "outputs": {
            "labels": "(B, H, W) uint8 class indices at the input's size",
            "logits": f"(B, K, {cfg.data.image_size}, {cfg.data.image_size}) network logits",
        },
        "in_graph": [
            *(["per-image normalisation"] if normalize else []),
            "antialiased bilinear resize to input_size",
            "network",
            "bilinear resize of the logits to the input's size",
            "decode (argmax or sigmoid threshold)",
        ],
        "not_in_graph": ["reading files", "test-time mirroring (--tta)"]
        + ([] if normalize else ["normalisation (per case for volumes)"]),
    }


def export(
    ckpt: Path | str,
    fmt: str,
    out: Path | str,
    normalization: str = "graph",
    verbose: bool = False,
) -> dict[str, Any]:
    """Writes ``out`` from a checkpoint and returns its metadata (``export_module``)."""
    from mtlseg.engine.inference import load_module

    FORMATS.get(fmt)  # an unknown format is named before the checkpoint is read
    return export_module(load_module(ckpt), fmt, out, normalization, verbose)


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """The exporters' own progress and optimiser messages, kept out unless ``verbose``."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    sink = io.StringIO()
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_module(
    module, fmt: str, out: Path | str, normalization: str = "graph", verbose: bool = False
) -> dict[str, Any]:
    """``normalization``: ``graph`` (2D images) or ``outside`` (the file takes normalised
    images: volumes, normalised per case); ``verbose``: let the exporters speak."""
    writer = FORMATS.get(fmt)
    if normalization not in ("graph", "outside"):
        raise ConfigError(f"--normalization: graph or outside, got {normalization!r}")
    _exportable(module)
    normalize = normalization == "graph"
    graph = SegmentationGraph(module.eval(), normalize).eval()
    size = graph.size
    channels = int(module.hparams["in_channels"])
    example = (torch.rand(2, channels, size + 5, size + 3) * 255,)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=2)}
    dims[3] = torch.export.Dim("width", min=2)
    meta = metadata(module, normalize, fmt)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(verbose):
            with torch.no_grad():
                program = torch.export.export(graph, example, dynamic_shapes={"image": dims})
            writer(program, example, out, meta)
    except (torch._dynamo.exc.Unsupported, RuntimeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MtlsegError(
            f"the {meta['recipe']} network could not be exported as {fmt}: {first}"
        ) from None
    return meta
