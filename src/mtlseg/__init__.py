"""mtlseg: multi-task medical image segmentation with auxiliary tasks."""

__version__ = "0.1.0"
