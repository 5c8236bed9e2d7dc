"""The datasets mtlseg knows: where each archive lives, how it is checked and converted."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mtlseg.download import convert
from mtlseg.registry import Registry

Converter = Callable[[Path, Path, "int | None"], None]


@dataclass(frozen=True)
class RemoteDataset:
    """One public dataset: its archive, integrity data, licence and converter.

    ``checksum`` is ``"md5:..."`` or ``"sha256:..."`` where the publisher (or MONAI's table)
    gives one; ``None`` where none is published: then ``size_range`` (bytes) and ``counts``
    (files per output sub-folder) are what the download is checked against, and the SHA-256 of
    what arrived is printed and recorded. ``registration``: the dataset cannot be fetched
    anonymously; the text says where to obtain it and how to lay it out."""

    name: str
    description: str
    url: str = ""
    checksum: str | None = None
    size_range: tuple[int, int] | None = None
    counts: dict[str, int] = field(default_factory=dict)
    licence: str = ""
    citation: str = ""
    homepage: str = ""
    layout: str = "folder"  # what the converter writes: folder (images/+masks/) or nnunet
    converter: Converter | None = None
    registration: str | None = None


DATASETS: Registry[RemoteDataset] = Registry("dataset")


def _add(ds: RemoteDataset) -> None:
    DATASETS.register(ds.name)(ds)


def default_data_root() -> Path:
    """``$MTLSEG_DATA``, else the user's cache folder (``$XDG_CACHE_HOME/mtlseg/data``)."""
    if os.environ.get("MTLSEG_DATA"):
        return Path(os.environ["MTLSEG_DATA"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mtlseg" / "data"


_MSD_CITATION = (
    "Antonelli M, Reinke A, Bakas S, et al. The Medical Segmentation Decathlon. "
    "Nature Communications 13, 4128 (2022). doi:10.1038/s41467-022-30695-9"
)
_MSD_LICENCE = "CC-BY-SA 4.0 (Medical Segmentation Decathlon, http://medicaldecathlon.com)"


def _msd(task: str, description: str) -> RemoteDataset:
    """A Decathlon task from MONAI's own table of URLs and md5 values (``DecathlonDataset``)."""
    from monai.apps import DecathlonDataset

    return RemoteDataset(
        name=task,
        description=description,
        url=DecathlonDataset.resource[task],
        checksum=f"md5:{DecathlonDataset.md5[task]}",
        licence=_MSD_LICENCE,
        citation=_MSD_CITATION,
        homepage="http://medicaldecathlon.com",
        layout="nnunet",
        converter=convert.msd_to_nnunet,
    )


_add(
    RemoteDataset(
        name="kvasir-seg",
        description="1000 colonoscopy images with polyp masks (2D RGB, binary)",
        url="https://datasets.simula.no/downloads/kvasir-seg.zip",
        checksum=None,  # the publisher gives none: size, counts and the recorded SHA-256 instead
        size_range=(30_000_000, 80_000_000),  # the archive is about 46 MB
        counts={"images": 1000, "masks": 1000},
        licence="Research and educational use; cite the paper below (https://datasets.simula.no/kvasir-seg/)",
        citation=(
            "Jha D, Smedsrud PH, Riegler MA, Halvorsen P, de Lange T, Johansen D, Johansen HD. "
            "Kvasir-SEG: A Segmented Polyp Dataset. MultiMedia Modeling (MMM) 2020, 451-462. "
            "doi:10.1007/978-3-030-37734-2_37"
        ),
        homepage="https://datasets.simula.no/kvasir-seg/",
        converter=convert.kvasir_to_folder,
    )
)
_add(_msd("Task02_Heart", "MSD left atrium: 20 labelled MRI volumes (3D, binary)"))
_add(_msd("Task04_Hippocampus", "MSD hippocampus: 260 labelled MRI crops (3D, 3 classes)"))
_add(
    RemoteDataset(
        name="acdc",
        description="ACDC cardiac cine-MRI: 100 + 50 patients (3D, RV/MYO/LV); needs a registration",
        licence="Research use after registration (https://www.creatis.insa-lyon.fr/Challenge/acdc/)",
        citation=(
            "Bernard O, Lalande A, Zotti C, et al. Deep Learning Techniques for Automatic MRI "
            "Cardiac Multi-Structures Segmentation and Diagnosis: Is the Problem Solved? "
            "IEEE TMI 37(11), 2514-2525 (2018). doi:10.1109/TMI.2018.2837502"
        ),
        homepage="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
        layout="nnunet",
        registration=(
            "ACDC needs a registration: request it at "
            "https://www.creatis.insa-lyon.fr/Challenge/acdc/ (or its mirror on "
            "humanheart-project.creatis.insa-lyon.fr), then lay the volumes out as nnU-Net raw: "
            "DIR/dataset.json (channel_names {'0': 'MRI'}, labels {background: 0, RV: 1, MYO: 2, "
            "LV: 3}, file_ending '.nii.gz'), DIR/imagesTr/patientNNN_frameFF_0000.nii.gz and "
            "DIR/labelsTr/patientNNN_frameFF.nii.gz; then `mtlseg check-data DIR`"
        ),
    )
)
