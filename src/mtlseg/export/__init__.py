"""Trained models out of mtlseg: ONNX and torch.export programs with their pre- and
post-processing in the graph (``mtlseg export``), and ONNX inference without Lightning."""

from mtlseg.export.formats import FORMATS, export
from mtlseg.export.graph import SegmentationGraph

__all__ = ["FORMATS", "SegmentationGraph", "export"]
