"""Download, verify, convert, then move into place: nothing half-made is ever left behind.

Fetching and extraction are MONAI's (``monai.apps.utils.download_url``, ``extractall``); this
module adds what a user needs around them: the integrity checks, the atomic move, the licence
and the record of what was downloaded."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.error import ContentTooShortError, URLError

from mtlseg.download.catalog import DATASETS, RemoteDataset
from mtlseg.errors import MtlsegError

MARKER = ".mtlseg-download.json"  # written last: a folder without it is not a complete download
SOURCE = "SOURCE.md"  # licence and citation, beside the data


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(spec: RemoteDataset, archive: Path, progress: bool) -> None:
    from monai.apps.utils import HashCheckError, download_url

    kind, _, value = (spec.checksum or "").partition(":")
    monai_log = logging.getLogger("monai.apps")  # its lines repeat ours: one line each here
    level = monai_log.level
    try:
        monai_log.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():  # "no hash value provided": said below, with the SHA-256
            warnings.filterwarnings("ignore", message="No hash value")
            download_url(spec.url, archive, value or None, kind or "sha256", progress=progress)
    except HashCheckError:
        raise MtlsegError(
            f"{spec.name}: the archive from {spec.url} does not match its {kind} {value} "
            "(corrupt or changed download); nothing was written"
        ) from None
    except (ContentTooShortError, URLError, OSError, RuntimeError) as err:
        raise MtlsegError(
            f"{spec.name}: download from {spec.url} failed ({err}); nothing was written. {MIRROR}"
        ) from None
    finally:
        monai_log.setLevel(level)
    if not archive.is_file():  # MONAI swallows some OS errors
        raise MtlsegError(
            f"{spec.name}: download from {spec.url} failed; nothing was written. {MIRROR}"
        )


MIRROR = (
    "Without internet here: fetch the archive elsewhere and pass --url (a mirror, or a "
    "file:// path) and --sha256"
)


def _check_size(spec: RemoteDataset, archive: Path) -> None:
    size = archive.stat().st_size
    if spec.checksum is None and spec.size_range is not None:
        low, high = spec.size_range
        if not low <= size <= high:
            raise MtlsegError(
                f"{spec.name}: the archive is {size} bytes, expected {low}-{high} "
                "(truncated or a different file); nothing was written"
            )


def _extract(spec: RemoteDataset, archive: Path, into: Path) -> None:
    from monai.apps.utils import extractall

    file_type = "zip" if zipfile.is_zipfile(archive) else "tar"
    try:
        extractall(archive, into, file_type=file_type, has_base=False)
    except Exception as err:  # zipfile/tarfile/zlib raise many kinds for a damaged archive
        raise MtlsegError(
            f"{spec.name}: the archive is damaged (truncated download?): {err}; nothing was written"
        ) from None


def _check_counts(spec: RemoteDataset, out: Path) -> dict[str, int]:
    counts = {
        sub.name: sum(1 for f in sub.iterdir() if f.is_file())
        for sub in sorted(out.iterdir())
        if sub.is_dir()
    }
    wrong = {k: (counts.get(k, 0), n) for k, n in spec.counts.items() if counts.get(k, 0) != n}
    if wrong:
        detail = ", ".join(f"{k}: {got} files, expected {n}" for k, (got, n) in wrong.items())
        raise MtlsegError(f"{spec.name}: incomplete archive ({detail}); nothing was written")
    return counts


def _write_source(spec: RemoteDataset, out: Path, record: dict) -> None:
    lines = [
        f"# {spec.name}: {spec.description}",
        "",
        f"- Source: {spec.url} (downloaded {record['downloaded']} by mtlseg {record['mtlseg']})",
        f"- Home page: {spec.homepage}",
        f"- Licence: {spec.licence}",
        f"- Archive SHA-256: {record['sha256']}",
        "",
        "Cite:",
        "",
        spec.citation,
        "",
    ]
    (out / SOURCE).write_text("\n".join(lines))
    (out / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def download(
    name: str,
    dest: Path | str,
    *,
    url: str | None = None,
    sha256: str | None = None,
    resize: int | None = None,
    force: bool = False,
    progress: bool = True,
    spec: RemoteDataset | None = None,
) -> Path:
    """``dest/name``, downloaded, verified and converted; an existing complete copy is reused.

    ``url``/``sha256`` replace the catalogue's source (a mirror); ``spec`` replaces the whole
    entry (tests). Work happens in a temporary folder beside the destination and is moved into
    place only when complete, so an interrupted or failed download leaves nothing behind."""
    from mtlseg import __version__

    spec = spec or DATASETS.get(name)
    if spec.registration:
        raise MtlsegError(spec.registration)
    if url:  # a mirror serves the same archive: the catalogue's checksum still applies
        spec = replace(spec, url=url)
    if sha256:
        spec = replace(spec, checksum=f"sha256:{sha256.lower()}")
    assert spec.converter is not None, spec.name
    root = Path(dest)
    target = root / spec.name
    if target.exists() and not force:
        if is_complete(target):
            print(f"{spec.name}: already downloaded at {target} (--force downloads it again)")
            return target
        raise MtlsegError(
            f"{target} exists and is not a complete mtlseg download; "
            "move it away or pass --force to replace it"
        )
    created = [d for d in (root, *root.parents) if not d.exists()]  # removed if it fails
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=root))
    done = False
    try:
        archive = work / (Path(spec.url.split("?")[0]).name or "archive")
        print(f"{spec.name}: downloading {spec.url}")
        _fetch(spec, archive, progress)
        _check_size(spec, archive)
        digest = sha256_of(archive)
        _extract(spec, archive, work / "extracted")
        out = work / spec.name
        out.mkdir()
        spec.converter(work / "extracted", out, resize)
        counts = _check_counts(spec, out)
        record = {
            "name": spec.name,
            "url": spec.url,
            "checksum": spec.checksum,
            "sha256": digest,
            "bytes": archive.stat().st_size,
            "files": counts,
            "layout": spec.layout,
            "resize": resize,
            "downloaded": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mtlseg": __version__,
        }
        _write_source(spec, out, record)
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
        done = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created if not done else []:  # the folders made for it, innermost first
            with contextlib.suppress(OSError):  # not empty: something else is there now
                folder.rmdir()
    verified = spec.checksum or "no checksum published: size and file counts checked"
    print(
        f"{spec.name}: {target} ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
        f"archive SHA-256 {digest} ({verified})\nlicence: {spec.licence}\ncite: {spec.citation}"
    )
    return target
