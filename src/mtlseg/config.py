"""Typed run configuration: dataclasses built from recipe YAML and `--set` overrides.

Every field is validated at load time; errors name the dotted key (``train.max_steps``).
Component-specific options (a backbone's widths, a task's HOG cell size) live in a
``params`` mapping that the component validates against its own dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtlseg.conventions import EMPTY_CONVENTIONS
from mtlseg.errors import ConfigError

RECIPE_DIR = Path(__file__).parent / "recipes"


@dataclass
class DataConfig:
    """Where the data is and how samples are prepared."""

    path: str = ""
    format: str = "auto"  # auto | folder | nnunet
    image_size: int = 128  # every slice/image is resized to image_size x image_size
    # how masks are resized on the images' pixel grid (mtlseg.data.resample.LABEL_RESIZE):
    # linear (one-hot, antialiased linear, argmax) | nearest-exact | nearest (earlier runs')
    label_resize: str = "linear"
    normalization: str = "zscore"  # per case: zscore | minmax
    mask_mode: str = "auto"  # folder masks: auto | binary | labels
    mask_threshold: int = 127  # binary masks: value > threshold is foreground
    num_classes: int | None = None  # folder masks in labels mode; inferred when None
    channels: int | None = None  # expected input channels; None accepts what the data has
    splits: str | None = None  # splits JSON; default <data>/splits.json when present
    fold: int = 0  # which fold of an nnU-Net style list of folds
    split_mode: str = "patient"  # case | patient | seen-patients (mtlseg.data.splits)
    val_fraction: float = 0.2  # seeded splits: fraction of cases/patients held out
    split_seed: int = 0
    allow_unlisted: bool = False  # cases in no list of a splits file: error unless true
    # patient id and scan/phase tag from the case id (ACDC: patient001_frame01)
    case_pattern: str = r"^(?P<patient>.+?)_(?P<phase>(?:frame|phase|day|time|tp|t)\d+)$"
    # augmentation pipeline by name (mtlseg.data.transforms.AUGMENTATIONS); true/false
    # (older recipes) mean mild / none; in 3D any value but none means random flips per axis
    augment: bool | str = "strong"
    num_workers: int = 1  # DataLoader worker processes that read and augment samples
    # image/case-level annotations (mtlseg.data.annotations): "auto" reads case_labels.csv /
    # the one *bboxes.json at the dataset root when present; a path; null: none
    labels: str | None = "auto"
    boxes: str | None = "auto"
    # 2: train on slices/images | 3: train on volumetric patches (mtlseg.data.volumes)
    dims: int = 2
    patch_size: list[int] | None = None  # 3D training patch (h, w, d); default (S, S, 8)
    # which training patients (cases under split_mode case) keep their masks: all | a count |
    # a fraction in (0, 1) | a path to a JSON list of ids (mtlseg.data.budgets); the rest of
    # the training split is the unlabelled pool, whose masks are never read
    label_budget: Any = "all"
    label_seed: int = 0  # the seeded draw of a budget (the same for every recipe of a compare)
    # folders of images without masks (plain, or nnU-Net imagesTr/imagesTs) added to the pool
    unlabelled_dirs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # names from registries (label_resize, augment) are checked by mtlseg.settings
        self.label_budget = check_label_budget(self.label_budget)
        if self.dims not in (2, 3):
            raise ConfigError(f"data.dims: expected 2 or 3, got {self.dims}")
        if self.patch_size is not None and (len(self.patch_size) != 3 or min(self.patch_size) < 1):
            raise ConfigError(
                f"data.patch_size: expected three positive sizes (h, w, d), got {self.patch_size}"
            )
        if isinstance(self.augment, bool):
            self.augment = "mild" if self.augment else "none"


def check_label_budget(value: Any) -> Any:
    """``data.label_budget``: ``all``, a count (>= 1), a fraction strictly between 0 and 1,
    or a path to a JSON list of ids. A float 1.0 is refused: as a fraction it means every
    case, as a count one case, and the config's coercion would make it the latter."""
    if isinstance(value, bool):
        raise ConfigError(
            f"data.label_budget: expected all, a count, a fraction or a path, got {value!r}"
        )
    if isinstance(value, float):
        if value.is_integer():
            raise ConfigError(
                f"data.label_budget: {value} is ambiguous (a fraction of 1 or one case); write "
                "all for every case, or an integer count"
            )
        if not 0.0 < value < 1.0:
            raise ConfigError(f"data.label_budget: a fraction must be in (0, 1), got {value}")
        return value
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"data.label_budget: a count must be >= 1, got {value}")
        return value
    if isinstance(value, str) and value:
        return value
    raise ConfigError(
        f"data.label_budget: expected all, a count, a fraction or a path, got {value!r}"
    )


def patch_size(cfg: DataConfig) -> list[int]:
    """The 3D training patch (and sliding-window size): ``data.patch_size`` or (S, S, 8)."""
    return list(cfg.patch_size) if cfg.patch_size else [cfg.image_size, cfg.image_size, 8]


@dataclass
class FiLMConfig:
    """Metadata conditioning (paper 001, section 4.3): which fields, MLP size, missing values."""

    fields: list[str] = field(
        default_factory=lambda: ["position", "phase", "num_slices", "height", "width"]
    )
    hidden: int = 64
    layers: int = 3  # Linear layers in each of the scale and shift MLPs
    missing: str = "error"  # error: refuse cases lacking a field | zero: fill the train mean


@dataclass
class ModelConfig:
    """Which backbone (by registry name), its own parameters, optional FiLM conditioning."""

    backbone: str = "unet"
    params: Any = field(default_factory=dict)  # a mapping; its Config once resolved (settings)
    film: FiLMConfig | None = None
    input: str = "image"  # what the network sees (mtlseg.models.inputs): image | lightness
    # which network validation, evaluate and predict run when a term keeps an EMA teacher
    # (mean teacher, BCP): student | teacher
    predict_with: str = "student"

    def __post_init__(self) -> None:
        if self.predict_with not in ("student", "teacher"):
            raise ConfigError(
                f"model.predict_with: expected student or teacher, got {self.predict_with!r}"
            )
        if self.film is not None and self.film.missing not in ("error", "zero"):
            raise ConfigError(
                f"model.film.missing: expected error or zero, got {self.film.missing!r}"
            )


@dataclass
class TaskConfig:
    """One task: registry kind, display name, loss weight and task-specific params."""

    kind: str
    name: str | None = None
    weight: float = 1.0
    params: Any = field(default_factory=dict)  # a mapping; its Config once resolved (settings)
    enabled: bool = True  # false drops the task (ablations: --set tasks.1.enabled=false)

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = self.kind


@dataclass
class TermConfig:
    """A loss term between the outputs of several tasks (mtlseg.terms), e.g. paper 003's
    sync-regularisation: registry kind, name, weight and its params."""

    kind: str
    name: str | None = None
    weight: float = 1.0
    params: Any = field(default_factory=dict)  # a mapping; its Config once resolved (settings)
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = self.kind


@dataclass
class StageConfig:
    """One stage of staged training (paper 003's three steps): how long it lasts, in one
    unit for every stage (steps, epochs, or a fraction of the run as the LR schedule counts
    it), which tasks and terms train (null: all; the primary task does unless the stage
    says ``primary: false`` or a training term replaces its loss) and optionally its base learning rate and its own
    schedule (``scheduler``). ``reset_teacher``: at the stage's first step the EMA teacher becomes a copy of the
    student (BCP's self-training starts from the pre-trained network as teacher). The last
    stage may leave its length out: it lasts until the run ends."""

    steps: int | None = None
    epochs: int | None = None
    fraction: float | None = None
    tasks: list[str] | None = None
    terms: list[str] | None = None
    lr: float | None = None
    # the stage's own learning-rate schedule (a train.scheduler name; None: the run's),
    # over the run's progress: BCP self-trains at a constant rate
    scheduler: str | None = None
    reset_teacher: bool = False
    name: str = ""
    primary: bool = True  # false: the primary task does not train (pretraining on the pool)

    def __post_init__(self) -> None:
        given = [u for u in ("steps", "epochs", "fraction") if getattr(self, u) is not None]
        if len(given) > 1:
            raise ConfigError(f"a stage has one length, got {' and '.join(given)}")
        length = getattr(self, given[0]) if given else None
        if length is not None and length <= 0:
            raise ConfigError(f"{given[0]}: a stage's length must be positive, got {length}")

    @property
    def unit(self) -> str | None:
        return next((u for u in ("steps", "epochs", "fraction") if getattr(self, u)), None)

    @property
    def length(self) -> float | None:
        return getattr(self, self.unit) if self.unit else None


@dataclass
class WeightingConfig:
    """How task losses are combined (registry name + params)."""

    kind: str = "fixed"
    params: Any = field(default_factory=dict)  # a mapping; its Config once resolved (settings)


@dataclass
class TrainConfig:
    """Optimisation schedule (paper 000 section 4: Adam 2e-4, halved every 50k, val every 1k;
    paper 001: Adam + cosine annealing, at most 10 epochs, early stopping).

    Schedules follow the run's progress: the larger of steps done / steps planned and, with
    ``max_minutes``, minutes spent / budget, so a budgeted run still anneals to its end.
    """

    max_steps: int = -1  # -1: no step limit (then max_epochs or max_minutes decide)
    max_epochs: int | None = None  # None: no epoch limit
    max_minutes: float | None = 30.0  # wall-clock training budget (Lightning's max_time)
    batch_size: int = 16
    # unlabelled images per step from the pool, besides batch_size labelled ones; None: the
    # batch size when there is a pool and some task or term learns without masks, else 0
    unlabelled_batch_size: int | None = None
    # separate: the labelled and the pool's rows as two forwards, so batch norm never mixes
    # their statistics; joint: one forward (SSL4MIS), with which mean teacher, DTC and HOG on
    # the pool collapsed on ACDC (docs/archive.md, "Batch norm and the pool")
    pool_forward: str = "separate"
    optimizer: str = "adam"  # adam | adamw | sgd (Nesterov, nnU-Net), mtlseg.engine.optimizers
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.99  # sgd only
    scheduler: str = "poly"  # poly | cosine | step | constant (mtlseg.engine.schedulers)
    warmup: float = 0.05  # linear warm-up over this fraction of the run (steps or budget)
    lr_halve_every: int = 50_000  # step scheduler only
    val_every: int = 250  # validate every N optimiser steps; 0: at the end of every epoch
    early_stopping: int | None = None  # stop after N validations without a better val Dice
    sampler: str = "shuffle"  # shuffle | pairs | patient-pairs (adjacent-slice pairs)
    seed: int = 0
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int = 1  # processes (one per GPU, or CPU processes): > 1 trains with DDP
    strategy: str = "auto"  # Lightning strategy; auto: ddp when devices > 1
    # auto: on GPU bf16-mixed where native, else 16-mixed; on CPU bf16-mixed where it is
    # native and faster, else 32 (the reason is logged)
    # (mtlseg.engine.precision; the run's config.yaml records what it resolved to)
    precision: str | int = "auto"  # auto | 32 | bf16-mixed | 16-mixed
    grad_clip: float | None = None  # clip the gradient's global norm (after any aggregator)
    log_every: int = 10
    # Lightning loggers (mtlseg.engine.loggers): csv is always kept; tensorboard, mlflow
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    mlflow_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    mlflow_experiment: str = "mtlseg"
    progress_bar: bool = True
    stages: list[StageConfig] = field(default_factory=list)  # staged training; [] = one stage

    PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed")

    def __post_init__(self) -> None:
        if self.pool_forward not in ("joint", "separate"):
            raise ConfigError(
                f"train.pool_forward: expected joint or separate, got {self.pool_forward!r}"
            )
        self.precision = str(self.precision)  # --set train.precision=32 reads as a number
        if self.precision not in self.PRECISIONS:
            raise ConfigError(
                f"train.precision: expected one of {', '.join(self.PRECISIONS)}, "
                f"got {self.precision!r}"
            )
        for i, stage in enumerate(self.stages[:-1]):
            if stage.unit is None:
                raise ConfigError(
                    f"train.stages.{i}: only the last stage may leave out its length "
                    "(steps, epochs or fraction)"
                )
        units = {s.unit for s in self.stages if s.unit}
        if len(units) > 1:
            raise ConfigError(
                f"train.stages: give every stage's length in one unit, got {sorted(units)}"
            )


@dataclass
class MetricsConfig:
    """How segmentation is scored (``mtlseg.metrics.segmentation``): ``empty`` is the value of
    a class in neither prediction nor truth of a case: ``exclude`` (undefined, left out of the
    means: nnU-Net's convention), ``one`` or ``zero`` (paper 001 section 5.2)."""

    empty: str = "exclude"

    def __post_init__(self) -> None:
        if self.empty not in EMPTY_CONVENTIONS:
            raise ConfigError(
                f"metrics.empty: expected one of {', '.join(EMPTY_CONVENTIONS)}, got {self.empty!r}"
            )


@dataclass
class RunConfig:
    """A whole recipe: data, model, tasks, weighting, training and how it is scored."""

    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    tasks: list[TaskConfig] = field(default_factory=list)
    terms: list[TermConfig] = field(default_factory=list)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    # the segmentation task that the predictor, the metrics, the stages and the
    # semi-supervised terms use; empty: the recipe's first segmentation task
    primary: str = ""

    def __post_init__(self) -> None:
        self.tasks = [t for t in self.tasks if t.enabled]
        self.terms = [t for t in self.terms if t.enabled]
        if not self.tasks:
            raise ConfigError("tasks: a recipe needs at least one task (segmentation)")
        names = [t.name for t in self.tasks] + [t.name for t in self.terms]
        if len(set(names)) != len(names):
            raise ConfigError(f"tasks, terms: names must be unique, got {names}")
        self.primary = self._primary()
        self._check_stages()

    def _primary(self) -> str:
        """The primary task's name: ``primary``, checked, or the first segmentation task."""
        kinds = {t.name: t.kind for t in self.tasks}
        if not self.primary:
            first = next((n for n, k in kinds.items() if k == "segmentation"), None)
            if first is None:
                raise ConfigError(
                    "tasks: a recipe needs a segmentation task (its primary task); "
                    f"it has {', '.join(kinds.values())}"
                )
            return first
        if self.primary not in kinds:
            raise ConfigError(
                f"primary: no task named {self.primary!r}; tasks: {', '.join(map(str, kinds))}"
            )
        if kinds[self.primary] != "segmentation":
            raise ConfigError(
                f"primary: task {self.primary!r} is a {kinds[self.primary]} task; the primary "
                "task is a segmentation task"
            )
        return self.primary

    def _check_stages(self) -> None:
        """Stages name tasks and terms of this recipe, and start before the run ends."""
        tasks, terms = [t.name for t in self.tasks], [t.name for t in self.terms]
        for i, stage in enumerate(self.train.stages):
            for key, valid in (("tasks", tasks), ("terms", terms)):
                unknown = [n for n in getattr(stage, key) or [] if n not in valid]
                if unknown:
                    raise ConfigError(
                        f"train.stages.{i}.{key}: unknown {key[:-1]} {unknown[0]!r}; this "
                        f"recipe's {key}: {', '.join(map(str, valid)) or '(none)'}"
                    )
        steps = [s.steps for s in self.train.stages[:-1] if s.steps]
        if steps and 0 < self.train.max_steps <= sum(steps):
            raise ConfigError(
                f"train.stages: the last stage would start at step {sum(steps)}, at or after "
                f"train.max_steps={self.train.max_steps}"
            )
        fractions = [s.fraction for s in self.train.stages[:-1] if s.fraction]
        if fractions and sum(fractions) >= 1:
            raise ConfigError(
                f"train.stages: the fractions before the last stage sum to {sum(fractions)} >= 1"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if tp is Any:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def build_dataclass(cls: type, raw: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    prefix = f"{key}." if key else ""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if not key or str(err).startswith(key):
            raise
        raise ConfigError(f"{key}: {err}") from None
    except ValueError as err:  # a params dataclass's own check (``__post_init__``)
        raise ConfigError(f"{key or cls.__name__}: {err}") from None


def typed(cls: type, params: Any, key: str) -> Any:
    """A component's ``params``: already its ``cls`` (resolved at load), or built from a
    mapping (a builder called with raw params: tests, tools)."""
    return params if isinstance(params, cls) else build_dataclass(cls, params, key)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    key, _, raw_value = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({err})") from None
    return key.split("."), value


def _list_index(items: list, part: str, dotted: str) -> int:
    """A list element by position, or a task by its name (``tasks.hog.weight``)."""
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise ConfigError(f"--set {dotted}: index {index} out of range ({len(items)} items)")
        return index
    for i, item in enumerate(items):
        if isinstance(item, dict) and (item.get("name") or item.get("kind")) == part:
            return i
    raise ConfigError(f"--set {dotted}: no list item named {part!r}")


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``raw[path]`` in a nested dict/list structure, creating mappings under params."""
    dotted = ".".join(path)
    node: Any = raw
    for depth, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, part, dotted)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(path[:depth])} is not a mapping")
        node = node.setdefault(part, {})
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {dotted}: parent is not a mapping")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe_dict(recipe: str) -> dict[str, Any]:
    """Read a shipped recipe by name, or a YAML file by path."""
    path = Path(recipe)
    if not (path.suffix in {".yaml", ".yml"} and path.exists()):
        path = RECIPE_DIR / f"{recipe}.yaml"
        if not path.exists():
            raise ConfigError(
                f"unknown recipe {recipe!r}; shipped recipes: {', '.join(recipe_names())} "
                "(or give a path to a .yaml file)"
            )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping")
    return raw


# keys added after runs were saved, and the value those runs used (their own behaviour)
SAVED_BEFORE = {("data", "label_resize"): "nearest"}


def with_saved_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A configuration saved by a run (a checkpoint's hyper-parameters, a run's config.yaml)
    with every key it predates set to what that run did (``SAVED_BEFORE``), so an old
    checkpoint rebuilds, trains on and resumes with its own behaviour, not today's default."""
    out = copy.deepcopy(raw)
    for (section, key), value in SAVED_BEFORE.items():
        if isinstance(out.get(section), dict):
            out[section].setdefault(key, value)
    return out


ENV_SET = "MTLSEG_SET"  # KEY=VALUE;KEY=VALUE applied after every --set (smoke runs)


def env_overrides() -> list[str]:
    """``$MTLSEG_SET``'s overrides: ``;``-separated ``KEY=VALUE`` items, applied to every
    configuration after its own ``--set`` (e.g. ``train.max_steps=20;data.image_size=64``
    makes every command of the quickstart a run of seconds)."""
    return [item.strip() for item in os.environ.get(ENV_SET, "").split(";") if item.strip()]


def parse_config(
    recipe: str | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Recipe (name, path or dict) + ``--set`` overrides (then ``$MTLSEG_SET``'s) -> a
    RunConfig whose fields are checked and whose components' ``params`` are still mappings;
    ``mtlseg.settings.load_config`` types those (what every command uses)."""
    raw = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe_dict(recipe)
    for text in [*overrides, *env_overrides()]:
        path, value = parse_override(text)
        apply_override(raw, path, value)
    return build_dataclass(RunConfig, raw)
