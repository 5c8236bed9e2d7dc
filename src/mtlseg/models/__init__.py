"""Backbones (by registry name), auxiliary heads and the multi-task model; importing this
package registers every backbone module in it."""

from mtlseg.models.multitask import MultiTaskModel
from mtlseg.models.registry import BACKBONES, build_backbone
from mtlseg.registry import import_submodules

import_submodules(__name__)

__all__ = ["BACKBONES", "MultiTaskModel", "build_backbone"]
