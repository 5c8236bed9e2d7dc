"""Which backbones export, how long it takes, and how close the ONNX graph stays to torch.

    python benchmarks/export_backbones.py                      # every 2D backbone, tiny widths
    python benchmarks/export_backbones.py --backbones unet segnet

Builds each registered 2D backbone with its tiny params (untrained: the graph, not the
weights, is what is checked) and the segmentation task alone, exports it to ONNX with
``mtlseg.export.export_module``, runs the file in onnxruntime on random images of a size
other than the training size, and prints the export time, the largest logit difference
against ``SegmentationGraph`` in torch and the share of equal labels.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from mtlseg.engine.module import MultiTaskModule
from mtlseg.export.formats import export_module
from mtlseg.export.graph import SegmentationGraph
from mtlseg.models import BACKBONES
from mtlseg.models.registry import TINY_PARAMS
from mtlseg.settings import load_config

VOLUMETRIC = {"unet3d"}


def module_for(backbone: str, size: int) -> MultiTaskModule:
    config = load_config("unet", [f"data.image_size={size}"]).to_dict()
    config["model"] = {**config["model"], "backbone": backbone, "params": TINY_PARAMS[backbone]}
    config["tasks"] = config["tasks"][:1]
    return MultiTaskModule(config, 3, ["background", "a", "b"]).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=None)
    p.add_argument("--size", type=int, default=32, help="training size of the graph")
    args = p.parse_args()
    names = args.backbones or [b for b in BACKBONES.names() if b not in VOLUMETRIC]
    rng = np.random.default_rng(0)
    image = (rng.random((2, 3, args.size + 9, args.size + 14)) * 255).astype(np.float32)
    print(f"{'backbone':14s} {'export s':>9s} {'max |logit diff|':>17s} {'equal labels':>13s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            module = module_for(name, args.size)
            out = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            try:
                export_module(module, "onnx", out)
            except Exception as err:
                print(f"{name:14s} failed: {str(err).splitlines()[0]}")
                continue
            seconds = time.perf_counter() - start
            session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
            labels, logits = session.run(None, {"image": image})
            with torch.no_grad():
                ref_labels, ref_logits = SegmentationGraph(module)(torch.from_numpy(image))
            diff = float(np.abs(logits - ref_logits.numpy()).max())
            equal = float((labels == ref_labels.numpy()).mean())
            print(f"{name:14s} {seconds:9.1f} {diff:17.2e} {equal:13.4f}")


if __name__ == "__main__":
    main()
