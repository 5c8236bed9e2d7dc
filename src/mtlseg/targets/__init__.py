"""Pseudo-label generators: targets computed from the image itself, batched on device."""

from mtlseg.targets.hog import HOGConfig, hog_descriptor, hog_dim

__all__ = ["HOGConfig", "hog_descriptor", "hog_dim"]
