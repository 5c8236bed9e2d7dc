"""Public datasets mtlseg can fetch and lay out as it reads them (``mtlseg download NAME``)."""

from mtlseg.download.catalog import DATASETS, RemoteDataset, default_data_root
from mtlseg.download.fetch import MARKER, download, is_complete

__all__ = ["DATASETS", "MARKER", "RemoteDataset", "default_data_root", "download", "is_complete"]
