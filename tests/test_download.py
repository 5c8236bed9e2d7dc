"""`mtlseg download` against a loopback HTTP server (127.0.0.1 only): no internet needed."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mtlseg.cli import main
from mtlseg.data.sources import discover
from mtlseg.download import DATASETS, MARKER, download
from mtlseg.errors import MtlsegError


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def serve(tmp_path):
    """Serves ``tmp_path/www`` on 127.0.0.1; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def kvasir_zip(kvasir_root: Path, n: int = 3) -> bytes:
    """An archive shaped like the official one (``Kvasir-SEG/...``) from ``n`` real pairs, with
    the macOS resource forks such archives carry."""
    buf = io.BytesIO()
    names = sorted(p.name for p in (kvasir_root / "images").iterdir())[:n]
    with zipfile.ZipFile(buf, "w") as z:
        for name in names:
            for sub in ("images", "masks"):
                z.write(kvasir_root / sub / name, f"Kvasir-SEG/{sub}/{name}")
        z.writestr(f"Kvasir-SEG/images/._{names[0]}", b"\x00\x05resource fork")
        z.writestr(f"__MACOSX/Kvasir-SEG/masks/._{names[0]}", b"\x00\x05resource fork")
        z.write(kvasir_root / "kavsir_bboxes.json", "Kvasir-SEG/kavsir_bboxes.json")
    return buf.getvalue()


def kvasir_spec(url: str, n: int = 3):
    return replace(
        DATASETS.get("kvasir-seg"), url=url, size_range=(1, 10**9), counts={"images": n, "masks": n}
    )


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_kvasir_download_resizes_checks_and_records(kvasir_root, serve, tmp_path, capsys):
    www, base = serve
    data = kvasir_zip(kvasir_root)
    (www / "kvasir-seg.zip").write_bytes(data)
    spec = kvasir_spec(f"{base}/kvasir-seg.zip")
    target = download("kvasir-seg", tmp_path / "data", resize=64, progress=False, spec=spec)

    assert leftovers(tmp_path / "data") == ["kvasir-seg"]  # no partial folder left
    images = sorted((target / "images").iterdir())
    masks = sorted((target / "masks").iterdir())
    assert [p.name for p in images] == sorted(p.name for p in (kvasir_root / "images").iterdir())[
        :3
    ]
    assert [p.suffix for p in masks] == [".png"] * 3  # lossless: masks stay binary
    for img, mask in zip(images, masks, strict=True):
        assert Image.open(img).size == (64, 64) and Image.open(img).mode == "RGB"
        m = np.asarray(Image.open(mask))
        assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 255}
        original = np.asarray(Image.open(kvasir_root / "masks" / img.name).convert("L")) > 127
        assert abs((m > 0).mean() - original.mean()) < 0.03  # the same polyp, smaller
    record = json.loads((target / MARKER).read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["files"] == {"images": 3, "masks": 3}
    assert "Kvasir-SEG: A Segmented Polyp Dataset" in (target / "SOURCE.md").read_text()
    out = capsys.readouterr().out
    assert hashlib.sha256(data).hexdigest() in out and "licence:" in out
    assert len(discover(target).cases) == 3  # a layout mtlseg reads

    # a second call reuses the complete copy instead of downloading again
    (www / "kvasir-seg.zip").unlink()
    assert download("kvasir-seg", tmp_path / "data", progress=False, spec=spec) == target


def test_original_sizes_are_kept_without_resize(kvasir_root, serve, tmp_path):
    www, base = serve
    (www / "k.zip").write_bytes(kvasir_zip(kvasir_root, n=2))
    target = download(
        "kvasir-seg", tmp_path / "d", progress=False, spec=kvasir_spec(f"{base}/k.zip", n=2)
    )
    name = sorted((target / "images").iterdir())[0].name
    assert (target / "images" / name).read_bytes() == (kvasir_root / "images" / name).read_bytes()


def test_a_wrong_checksum_leaves_nothing(kvasir_root, serve, tmp_path):
    www, base = serve
    (www / "k.zip").write_bytes(kvasir_zip(kvasir_root))
    spec = replace(kvasir_spec(f"{base}/k.zip"), checksum="sha256:" + "0" * 64)
    with pytest.raises(MtlsegError, match="does not match its sha256"):
        download("kvasir-seg", tmp_path / "data", progress=False, spec=spec)
    assert leftovers(tmp_path / "data") == []
    # --sha256 on the command line does the same through the public path
    with pytest.raises(MtlsegError, match="does not match"):
        download(
            "kvasir-seg",
            tmp_path / "data",
            progress=False,
            spec=kvasir_spec(f"{base}/k.zip"),
            sha256="ab" * 32,
        )
    assert leftovers(tmp_path / "data") == []


def test_a_truncated_archive_is_a_clear_error_and_leaves_nothing(kvasir_root, serve, tmp_path):
    www, base = serve
    data = kvasir_zip(kvasir_root)
    (www / "k.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(MtlsegError, match="damaged"):
        download("kvasir-seg", tmp_path / "data", progress=False, spec=kvasir_spec(f"{base}/k.zip"))
    assert leftovers(tmp_path / "data") == []
    # the size check catches it before extraction when the size is known
    small = replace(kvasir_spec(f"{base}/k.zip"), size_range=(len(data), len(data)))
    with pytest.raises(MtlsegError, match="truncated"):
        download("kvasir-seg", tmp_path / "data", progress=False, spec=small)
    assert leftovers(tmp_path / "data") == []


def test_missing_files_fail_the_count_check(kvasir_root, serve, tmp_path):
    www, base = serve
    (www / "k.zip").write_bytes(kvasir_zip(kvasir_root, n=2))
    with pytest.raises(MtlsegError, match="images: 2 files, expected 3"):
        download("kvasir-seg", tmp_path / "data", progress=False, spec=kvasir_spec(f"{base}/k.zip"))
    assert leftovers(tmp_path / "data") == []


def test_an_existing_folder_is_refused_unless_forced(kvasir_root, serve, tmp_path):
    www, base = serve
    (www / "k.zip").write_bytes(kvasir_zip(kvasir_root))
    mine = tmp_path / "data" / "kvasir-seg"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own files")
    spec = kvasir_spec(f"{base}/k.zip")
    with pytest.raises(MtlsegError, match="not a complete mtlseg download.*--force"):
        download("kvasir-seg", tmp_path / "data", progress=False, spec=spec)
    assert (mine / "notes.txt").is_file()
    bad = replace(spec, checksum="sha256:" + "0" * 64)  # a forced download that fails...
    with pytest.raises(MtlsegError, match="does not match"):
        download("kvasir-seg", tmp_path / "data", progress=False, spec=bad, force=True)
    assert (mine / "notes.txt").is_file()  # ...leaves the existing folder as it was
    assert leftovers(tmp_path / "data") == ["kvasir-seg"]
    download("kvasir-seg", tmp_path / "data", progress=False, spec=spec, force=True)
    assert not (mine / "notes.txt").exists() and (mine / MARKER).is_file()


def _nifti_bytes(array: np.ndarray) -> bytes:
    img = nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]))
    return gzip.compress(img.to_bytes())


def msd_tar(tmp_path: Path) -> bytes:
    """A tiny Decathlon-shaped task: MSD dataset.json, 2 training volumes, 1 test volume, and the
    ``._*`` files the real archives hold."""
    rng = np.random.default_rng(0)
    meta = {
        "name": "Hippocampus",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "licence": "CC-BY-SA 4.0",
        "reference": "Vanderbilt University Medical Center",
        "numTraining": 2,
    }
    members = {"Task04_Hippocampus/dataset.json": json.dumps(meta).encode()}
    for i in (1, 2):
        image = rng.normal(size=(12, 10, 6)).astype(np.float32)
        label = np.zeros((12, 10, 6), np.uint8)
        label[3:7, 2:6, 1:4] = 1
        label[7:10, 5:8, 2:5] = 2
        members[f"Task04_Hippocampus/imagesTr/hippocampus_00{i}.nii.gz"] = _nifti_bytes(image)
        members[f"Task04_Hippocampus/labelsTr/hippocampus_00{i}.nii.gz"] = _nifti_bytes(label)
        members[f"Task04_Hippocampus/imagesTr/._hippocampus_00{i}.nii.gz"] = b"\x00\x05fork"
    members["Task04_Hippocampus/imagesTs/hippocampus_009.nii.gz"] = _nifti_bytes(image)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_decathlon_task_becomes_nnunet_raw(serve, tmp_path):
    www, base = serve
    data = msd_tar(tmp_path)
    (www / "Task04_Hippocampus.tar").write_bytes(data)
    spec = replace(
        DATASETS.get("Task04_Hippocampus"),
        url=f"{base}/Task04_Hippocampus.tar",
        checksum=f"md5:{hashlib.md5(data).hexdigest()}",
    )
    target = download("Task04_Hippocampus", tmp_path / "data", progress=False, spec=spec)
    meta = json.loads((target / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert meta["channel_names"] == {"0": "MRI"} and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == 2
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [
        "hippocampus_001_0000.nii.gz",
        "hippocampus_002_0000.nii.gz",
    ]  # channel suffixes added, resource forks left out
    assert sorted(p.name for p in (target / "labelsTr").iterdir()) == [
        "hippocampus_001.nii.gz",
        "hippocampus_002.nii.gz",
    ]
    assert [p.name for p in (target / "imagesTs").iterdir()] == ["hippocampus_009_0000.nii.gz"]
    index = discover(target)
    assert sorted(c.case_id for c in index.cases) == ["hippocampus_001", "hippocampus_002"]
    label = nib.load(target / "labelsTr" / "hippocampus_001.nii.gz").get_fdata()
    assert (label == 2).sum() == 3 * 3 * 3  # the voxels survive the move untouched

    bad = replace(spec, checksum="md5:" + "f" * 32)
    with pytest.raises(MtlsegError, match="does not match its md5"):
        download("Task04_Hippocampus", tmp_path / "other", progress=False, spec=bad)
    assert leftovers(tmp_path / "other") == []


def test_cli_lists_and_names_the_known_datasets(capsys):
    assert main(["download", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(n in listed for n in ("kvasir-seg", "Task02_Heart", "Task04_Hippocampus", "acdc"))
    assert main(["download", "kvasir"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'kvasir'" in err and "kvasir-seg" in err
    assert main(["download", "acdc"]) == 2
    assert "registration" in capsys.readouterr().err


def test_demo_downloads_when_no_data_is_found(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_download(name, dest, **kw):
        calls.append((name, Path(dest), kw))
        raise MtlsegError("stop here")

    monkeypatch.setenv("MTLSEG_DATA", str(tmp_path / "mine"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mtlseg.download.download", fake_download)
    monkeypatch.setattr("mtlseg.cli.Path.is_dir", lambda self: False)
    assert main(["demo"]) == 2
    assert calls == [("kvasir-seg", tmp_path / "mine", {"resize": 256})]
    assert "downloading it to" in capsys.readouterr().out
    assert main(["demo", "--no-download"]) == 2
    assert "mtlseg download kvasir-seg --resize 256" in capsys.readouterr().err
    assert len(calls) == 1


def test_demo_looks_only_in_the_data_folder_it_is_given(tmp_path, monkeypatch, capsys):
    """The shared data (found from the repository) holds kvasir-seg; --data names another."""
    monkeypatch.chdir(Path(__file__).parents[1])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["demo", "--data", str(empty), "--no-download"]) == 2
    assert f"no kvasir-seg in {empty};" in capsys.readouterr().err


def test_no_connection_is_one_line_with_the_way_out_and_leaves_no_folder(tmp_path, capsys):
    dest = tmp_path / "new" / "data"
    argv = ["download", "kvasir-seg", "--dest", str(dest), "--url", "http://127.0.0.1:9/k.zip"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.count("failed") == 1
    assert "--url" in err and "--sha256" in err
    assert not (tmp_path / "new").exists()
