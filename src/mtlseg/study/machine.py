"""What decides whether two runs can be paired: the machine and the numerics of the code.

Two runs of one configuration and seed give the same numbers only on one kind of CPU (or
GPU), with one thread count, torch build and precision, and with the same source code. A
study pairs runs only when both their machine fingerprint and their numerics key agree. The
commit alone cannot decide it: committing a study's records moves HEAD without changing a
number, so the numerics key hashes the package's source itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import mtlseg
from mtlseg.engine.precision import cpu_flags, cpu_model

# CPU flags that change which kernels (and so which rounding) torch runs
NUMERIC_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "avx_vnni",
    "neon",
    "asimd",
    "sve",
)
PACKAGE = Path(mtlseg.__file__).parent


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Machine:
    """The machine fingerprint: device, CPU model and numeric flags, threads, torch and the
    resolved precision. ``id`` hashes them all."""

    device: str
    cpu: str
    flags: list[str] = field(default_factory=list)
    threads: int = 1
    torch: str = ""
    precision: str = "32"

    @property
    def id(self) -> str:
        return _short(json.dumps(asdict(self), sort_keys=True))

    def describe(self) -> str:
        return (
            f"{self.device}, {self.cpu} ({', '.join(self.flags) or 'no listed flags'}), "
            f"{self.threads} thread(s), torch {self.torch}, {self.precision}"
        )


def this_machine(precision: str, accelerator: str = "cpu") -> Machine:
    """The fingerprint of this process for a run at ``precision`` (already resolved)."""
    cpu, flags = cpu_model(), sorted(f for f in NUMERIC_FLAGS if f in cpu_flags())
    device = "cpu"
    if accelerator != "cpu" and torch.cuda.is_available():
        device = f"cuda {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return Machine(device, cpu, flags, torch.get_num_threads(), torch.__version__, precision)


@functools.cache
def source_digest(root: Path = PACKAGE) -> str:
    """A hash of every source file of the package (Python and recipes), by relative path;
    once per process, so it is the code this process loaded even if the files change."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def numerics_key(precision: str, root: Path = PACKAGE) -> str:
    """Runs with the same key ran the same code in the same arithmetic: the package source,
    torch's version and the resolved precision."""
    return _short(f"{source_digest(root)}|{torch.__version__}|{precision}")


def code_version(root: Path = PACKAGE) -> dict[str, Any]:
    """mtlseg's version, and the git commit of its checkout and whether the tree differs
    from it (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--", ".") if commit else None
    return {
        "version": mtlseg.__version__,
        "commit": commit,
        "dirty": bool(status) if status is not None else None,
    }
