"""A study file: the variants, label budgets and seeds of one comparison, resolved once.

```yaml
name: few-labels-acdc            # default: the file's stem
data: acdc                       # a path, or a dataset folder under $MTLSEG_DATA / ../shared/data
seeds: 3                         # seeds 0..2 of every variant, unless it says otherwise
budgets: [7, all]                # data.label_budget values; default [all]
set: [train.max_minutes=null, train.max_steps=3000]   # for every variant
variants:                        # the first is the baseline every other row is paired with
  - {name: unet, recipe: unet}
  - {name: unet-dtc, recipe: unet-dtc, seeds: 5}
  - {name: ceiling, recipe: unet, budgets: [all]}
  - {name: hog, recipe: unet-hog, grid: ["tasks.hog.weight=0.1,1"]}  # rows hog@tasks.hog.weight=0.1, ...
```

Each variant's configuration is built once (``load_config``) and checked down to every
component's ``params`` before anything trains; a cell (variant, budget, seed) is that
configuration with its seed and budget set, keyed by a hash of it (``Cell.key``), not by a
display name, so renaming a row keeps its records and changing a setting starts new ones.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlseg.config import RunConfig, build_dataclass
from mtlseg.errors import ConfigError
from mtlseg.settings import load_config
from mtlseg.study.grid import grid_points

# keys that say where or how a run is shown, not what it computes: left out of a cell's key
LOCAL_KEYS = {
    "data": ("path", "num_workers"),
    "train": ("progress_bar", "loggers", "mlflow_uri", "mlflow_experiment", "precision"),
}


@dataclass
class VariantSpec:
    """One row of the study file (before its grid is expanded)."""

    name: str
    recipe: str
    set: list[str] = field(default_factory=list)
    grid: list[str] = field(default_factory=list)  # KEY=V1,V2 as ``compare --grid``
    pairs: bool = False  # the grid keys' values side by side instead of their product
    seeds: int | None = None  # default: the study's
    budgets: list[Any] | None = None  # default: every budget of the study


@dataclass
class StudySpec:
    """The study file as written."""

    variants: list[VariantSpec]
    name: str = ""
    description: str = ""
    data: str = ""
    seeds: int = 3
    budgets: list[Any] = field(default_factory=lambda: ["all"])
    set: list[str] = field(default_factory=list)
    ceiling: str = ""  # a variant at budget all: rows report the share of the gap they close
    page: str = ""  # a docs page holding this study's generated tables (relative to the file)


@dataclass(frozen=True)
class Variant:
    """A row: its name, recipe and overrides, and the configuration they resolve to."""

    name: str
    recipe: str
    overrides: tuple[str, ...]
    config: RunConfig
    seeds: int
    budgets: tuple[str, ...]

    @property
    def folder(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,@+-]", "_", self.name)


@dataclass(frozen=True)
class Cell:
    """One run of the study: a variant at a label budget and a seed."""

    variant: Variant
    budget: str
    seed: int

    @property
    def config(self) -> RunConfig:
        cfg = self.variant.config
        return dataclasses.replace(
            cfg,
            data=dataclasses.replace(cfg.data, label_budget=_budget_value(self.budget)),
            train=dataclasses.replace(cfg.train, seed=self.seed),
        )

    @functools.cached_property
    def key(self) -> str:
        return config_key(self.config)

    @property
    def folder(self) -> str:
        return f"{self.variant.folder}/b{self.budget}-s{self.seed}-{self.key}"

    def describe(self) -> str:
        return f"{self.variant.name} budget {self.budget} seed {self.seed}"

    def holds(self, record: Any) -> bool:
        """Whether ``record`` (a ``store.Record``) is a run of this cell: its key, or, for a
        record made by code whose configuration had other fields (the key then differs), the
        same row, recipe, overrides, budget and seed."""
        if record.cell == self.key:
            return True
        v = self.variant
        return (record.variant, record.recipe, tuple(record.overrides), record.budget) == (
            v.name,
            v.recipe,
            v.overrides,
            self.budget,
        ) and record.seed == self.seed


@dataclass(frozen=True)
class Study:
    """A resolved study: its variants (the first is the baseline), budgets and data."""

    name: str
    data: str
    variants: tuple[Variant, ...]
    budgets: tuple[str, ...]
    description: str = ""
    source: Path | None = None
    ceiling: str | None = None
    page: Path | None = None

    @property
    def baseline(self) -> Variant:
        return self.variants[0]

    def cells(self) -> list[Cell]:
        """Every cell the study asks for, whole seed groups first (every variant and budget
        of seed 0, the baseline first, then seed 1, ...)."""
        top = max(v.seeds for v in self.variants)
        return [
            Cell(v, b, s)
            for s in range(top)
            for b in self.budgets
            for v in self.variants
            if b in v.budgets and (s < v.seeds or self.pairs_with_baseline(v, b, s))
        ]

    def pairs_with_baseline(self, v: Variant, budget: str, seed: int) -> bool:
        """Whether ``v`` is the baseline and another row needs it at (budget, seed): the
        baseline runs every seed that any row it is paired with runs."""
        return v is self.baseline and any(
            seed < w.seeds and budget in w.budgets for w in self.variants[1:]
        )


def config_key(cfg: RunConfig) -> str:
    """A hash of the resolved configuration without its local keys (``LOCAL_KEYS``)."""
    raw = cfg.to_dict()
    for section, keys in LOCAL_KEYS.items():
        for k in keys:
            raw[section].pop(k, None)
    text = json.dumps(raw, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _budget_value(budget: str) -> Any:
    """A budget's text as ``data.label_budget`` reads it (a count, a fraction, all, a path)."""
    value = yaml.safe_load(budget)
    return value if isinstance(value, int | float) else budget


def _budget_text(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{where}: a label budget is a count, a fraction or 'all', got {value!r}")
    return str(value)


def find_data(data: str, base: Path | None = None) -> str:
    """A study's ``data``: an existing path (relative to the study file, else the working
    directory), else a dataset folder under ``$MTLSEG_DATA``, ``../shared/data`` or the
    download cache (``mtlseg download``)."""
    from mtlseg.download import default_data_root

    candidates = [Path(data)]
    if base is not None and not Path(data).is_absolute():
        candidates.insert(0, base / data)
    roots = [Path(os.environ["MTLSEG_DATA"])] if os.environ.get("MTLSEG_DATA") else []
    roots += [Path("../shared/data"), default_data_root()]
    candidates += [r / data for r in roots]
    for c in candidates:
        if c.is_dir():
            return str(c)
    raise ConfigError(
        f"data: {data!r} is neither a folder nor a dataset under {', '.join(str(r) for r in roots)}"
    )


def load_study(path: Path | str, data: str | None = None) -> Study:
    """Read, validate and resolve a study file; ``data`` replaces the file's ``data``."""

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the study ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    try:
        spec = build_dataclass(StudySpec, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return resolve(spec, data or spec.data, path)


def resolve(spec: StudySpec, data: str, source: Path | None = None) -> Study:
    """Expand grids, check names, seeds, budgets and every key, build each configuration."""
    where = str(source) if source else "study"
    if not spec.variants:
        raise ConfigError(f"{where}: variants: a study needs at least one variant")
    if not data:
        raise ConfigError(f"{where}: data: name the dataset (a path or a dataset folder)")
    data_path = find_data(data, source.parent if source else None)
    budgets = tuple(_budget_text(b, f"{where}: budgets") for b in spec.budgets)
    if not budgets:
        raise ConfigError(f"{where}: budgets: an empty list (leave it out for [all])")
    variants: list[Variant] = []
    for i, row in enumerate(spec.variants):
        seeds = spec.seeds if row.seeds is None else row.seeds
        if seeds < 1:
            raise ConfigError(f"{where}: variants.{i}.seeds: at least 1 seed, got {seeds}")
        own = tuple(_budget_text(b, f"{where}: variants.{i}.budgets") for b in row.budgets or [])
        unknown = [b for b in own if b not in budgets]
        if unknown:
            raise ConfigError(
                f"{where}: variants.{i}.budgets: {unknown[0]} is not one of the study's "
                f"budgets ({', '.join(budgets)})"
            )
        for point in grid_points(row.grid, row.pairs) or [()]:
            name = row.name + (f"@{','.join(point)}" if point else "")
            overrides = (*spec.set, *row.set, *point)
            try:
                cfg = load_config(row.recipe, [*overrides, f"data.path={data_path}"])
            except ConfigError as err:  # a key under a component's params too
                raise ConfigError(f"{where}: variant {name!r}: {err}") from None
            variants.append(Variant(name, row.recipe, overrides, cfg, seeds, own or budgets))
    if spec.seeds < 1:
        raise ConfigError(f"{where}: seeds: at least 1 seed, got {spec.seeds}")
    names = [v.name for v in variants]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise ConfigError(f"{where}: two variants are named {twice!r}")
    base = variants[0]
    for v in variants[1:]:
        lacking = [b for b in v.budgets if b not in base.budgets]
        if lacking:
            raise ConfigError(
                f"{where}: variant {v.name!r} runs at budget {lacking[0]}, where the baseline "
                f"{base.name!r} does not: it could not be paired"
            )
    if spec.ceiling and not any(v.name == spec.ceiling and "all" in v.budgets for v in variants):
        raise ConfigError(
            f"{where}: ceiling: {spec.ceiling!r} is not a variant that runs at budget all"
        )
    name = spec.name or (source.stem if source else "study")
    home = source.parent if source else Path()
    page = Path(os.path.normpath(home / spec.page)) if spec.page else None
    return Study(
        name,
        data_path,
        tuple(variants),
        budgets,
        spec.description,
        source,
        spec.ceiling or None,
        page,
    )
