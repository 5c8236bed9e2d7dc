"""Staged training (``train.stages``): which stage an optimiser step is in, and what trains.

The stage follows from the step (and, for stages given as fractions, from the run's
progress as the LR schedule counts it), both restored on resume, so a resumed run is in
the stage it stopped in. Paper 003's three steps: seg + class, then + sync, then + scene.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable

from mtlseg.config import StageConfig
from mtlseg.engine.schedulers import SCHEDULERS
from mtlseg.errors import ConfigError


class StagePlan:
    """``index(step)`` -> the stage in force at optimiser step ``step`` (0-based).

    ``steps_per_epoch`` converts stages given in epochs; ``progress(step)`` in [0, 1] is
    used for stages given as fractions of the run.
    """

    def __init__(
        self,
        stages: list[StageConfig],
        primary: str,
        base_lr: float,
        steps_per_epoch: int = 1,
        progress: Callable[[int], float] | None = None,
    ) -> None:
        self.stages, self.primary, self.base_lr = list(stages), primary, base_lr
        self.progress = progress
        unit = next((s.unit for s in self.stages if s.unit), "steps")
        self.unit = unit
        scale = max(1, steps_per_epoch) if unit == "epochs" else 1
        lengths = [(s.length or 0) * scale for s in self.stages[:-1]]  # config checked: set
        self.ends = list(itertools.accumulate(lengths))  # where stages 0..n-2 end
        for i, stage in enumerate(self.stages):
            if stage.scheduler is not None and stage.scheduler not in SCHEDULERS:
                raise ConfigError(
                    f"train.stages.{i}.scheduler: unknown schedule {stage.scheduler!r}; "
                    f"valid: {', '.join(SCHEDULERS.names())}"
                )

    def index(self, step: int) -> int:
        if len(self.stages) < 2:
            return 0
        position = self.progress(step) if self.unit == "fraction" and self.progress else step
        return bisect.bisect_right(self.ends, position)

    def starts(self, step: int) -> bool:
        """Whether ``step`` is the first step of a stage after the first."""
        return step > 0 and self.index(step) != self.index(step - 1)

    def stage(self, step: int) -> StageConfig | None:
        return self.stages[self.index(step)] if self.stages else None

    def active(self, step: int, names: list[str], key: str) -> list[str]:
        """The task (``key="tasks"``) or term names of ``names`` that train at ``step``."""
        stage = self.stage(step)
        chosen = getattr(stage, key) if stage is not None else None
        primary = stage is None or stage.primary
        if chosen is None:
            return [n for n in names if primary or n != self.primary]
        return [
            n
            for n in names
            if (n in chosen and n != self.primary) or (n == self.primary and primary)
        ]

    def lr_factor(self, step: int) -> float:
        """The stage's learning rate relative to ``train.lr`` (1 when it sets none)."""
        stage = self.stage(step)
        if stage is None or stage.lr is None or self.base_lr <= 0:
            return 1.0
        return stage.lr / self.base_lr

    def schedule(self, step: int) -> str | None:
        """The stage's own learning-rate schedule (``StageConfig.scheduler``), None: the
        run's."""
        stage = self.stage(step)
        return stage.scheduler if stage is not None else None
