"""The results store: one small JSON record per finished run, meant to be committed.

``STORE/<study>/<variant>/b<budget>-s<seed>-<cell key>/<machine id>-<numerics key>.json``.
A record is the unit of evidence: written atomically and exclusively (never rewritten: a
second record of one cell on one machine and code is refused), validated on read (a clear
error naming the file and the field), and read whatever its schema version up to this one
(fields added later are optional). Records of one cell from several machines sit side by
side. Checkpoints never enter the store; they stay in the study's work folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mtlseg.errors import MtlsegError

SCHEMA = 1


@dataclass
class Record:
    """What one finished run leaves: enough to pair it, to score it again as a table, and to
    draw its curves, without its weights."""

    study: str
    variant: str
    cell: str  # the hash of the resolved configuration (``spec.config_key``)
    budget: str
    seed: int
    config: dict[str, Any]  # resolved, every default filled in
    machine: dict[str, Any]  # ``machine.Machine`` as a dict, with its ``id``
    numerics: str  # ``machine.numerics_key``
    # {"last"|"best": {"summary": {metric: mean}, "cases": [rows]}}, 7 significant digits;
    # the best's "cases" is "as last" when the best checkpoint is the last one
    scores: dict[str, Any]
    schema: int = SCHEMA
    recipe: str = ""
    overrides: list[str] = field(default_factory=list)
    labelled: list[str] = field(default_factory=list)  # case ids that kept their masks
    pool: list[str] = field(default_factory=list)  # the unlabelled pool's case ids
    code: dict[str, Any] = field(default_factory=dict)  # version, commit, dirty
    data: dict[str, Any] = field(default_factory=dict)  # path, files, bytes, fingerprint
    protocol: dict[str, Any] = field(default_factory=dict)
    best_step: int | None = None
    curves: dict[str, Any] = field(default_factory=dict)  # val, train_loss, weights
    steps: int = 0
    wall_s: float = 0.0
    steps_per_s: float = 0.0
    finished: str = ""

    REQUIRED = ("study", "variant", "cell", "budget", "seed", "config", "machine", "numerics")

    @property
    def machine_id(self) -> str:
        return str(self.machine["id"])

    @property
    def pairing(self) -> tuple[str, str, str | None]:
        """Records pair only when this agrees: the machine, the code's numerics and the
        data (its fingerprint; None in a record without one)."""
        return self.machine_id, self.numerics, self.data.get("id")

    def dice(self, checkpoint: str = "last", metric: str = "dice/mean") -> float:
        return float(self.scores[checkpoint]["summary"][metric])

    def labelled_count(self) -> int:
        """How many patients (cases when each is its own) the run's labelled training set
        held, by its own ``data.case_pattern``."""
        from mtlseg.config import DataConfig
        from mtlseg.data.metadata import parse_case_id

        pattern = self.config.get("data", {}).get("case_pattern") or DataConfig().case_pattern
        return len({parse_case_id(c, pattern)[0] for c in self.labelled})


def record_name(machine_id: str, numerics: str) -> str:
    return f"{machine_id}-{numerics}.json"


def read_record(path: Path) -> Record:
    """A record file -> Record, or an MtlsegError naming the file and what is wrong."""
    try:
        raw = json.loads(path.read_text())
    except OSError as err:
        raise MtlsegError(f"{path}: cannot read the record ({err.strerror})") from None
    except ValueError as err:
        raise MtlsegError(f"{path}: not a JSON record ({err})") from None
    if not isinstance(raw, dict) or "schema" not in raw:
        raise MtlsegError(f"{path}: not an mtlseg study record (no 'schema' field)")
    if not isinstance(raw["schema"], int) or raw["schema"] > SCHEMA:
        raise MtlsegError(
            f"{path}: record schema {raw['schema']!r}; this mtlseg reads schemas 1..{SCHEMA} "
            "(a newer mtlseg wrote it: update mtlseg)"
        )
    for key in (*Record.REQUIRED, "scores"):
        if key not in raw:
            raise MtlsegError(f"{path}: the record has no '{key}' field")
    if "last" not in raw["scores"] or "summary" not in raw["scores"]["last"]:
        raise MtlsegError(f"{path}: the record's 'scores' has no last-checkpoint summary")
    if "id" not in raw["machine"]:
        raise MtlsegError(f"{path}: the record's 'machine' has no 'id'")
    known = {f.name for f in fields(Record)}
    return Record(**{k: v for k, v in raw.items() if k in known})


class Store:
    """The records of one study under ``root``."""

    def __init__(self, root: Path | str, study: str) -> None:
        self.root = Path(root)
        self.folder = self.root / study

    def check_writable(self) -> None:
        """Fail before any training when records could not be written."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as err:
            raise MtlsegError(
                f"{self.folder}: the results store is not writable ({err.strerror})"
            ) from None

    def records(self) -> list[Record]:
        """Every record of the study, in path order."""
        if not self.folder.is_dir():
            return []
        return [read_record(p) for p in sorted(self.folder.glob("*/*/*.json"))]

    def path(self, cell_folder: str, machine_id: str, numerics: str) -> Path:
        return self.folder / cell_folder / record_name(machine_id, numerics)

    def write(self, record: Record, cell_folder: str) -> Path:
        """Write ``record`` atomically; refuse to replace an existing one."""
        target = self.path(cell_folder, record.machine_id, record.numerics)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(asdict(record), indent=1, sort_keys=False, default=str) + "\n"
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, target)  # atomic, and fails when the record exists
        except FileExistsError:
            raise MtlsegError(
                f"{target}: a record of this cell exists; records are never rewritten"
            ) from None
        finally:
            os.unlink(tmp)
        return target
