"""The EMA teacher that semi-supervised terms read (mean teacher, BCP): one per run, shared."""

from __future__ import annotations

from typing import cast

import torch
from torch.optim.swa_utils import AveragedModel

from mtlseg.errors import ConfigError
from mtlseg.models import MultiTaskModel
from mtlseg.terms import Term
from mtlseg.terms.base import TeacherSpec


class EmaTeacher(AveragedModel):
    """An exponential moving average of the student, parameters and buffers (batch-norm
    statistics) alike (Tarvainen & Valpola 2017, eq. 1 of "Mean teachers are better role
    models"), averaged as the terms' ``TeacherSpec`` says. torch's ``AveragedModel``, so a
    checkpoint holds it as ``teacher.module.*`` and ``teacher.n_averaged``."""

    def __init__(self, student: MultiTaskModel, spec: TeacherSpec) -> None:
        def ema(teacher: torch.Tensor, new: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
            a = min(1.0 - 1.0 / (float(n) + 1.0), spec.decay) if spec.ramp else spec.decay
            return a * teacher + (1.0 - a) * new

        super().__init__(student, avg_fn=ema, use_buffers=True)
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def network(self) -> MultiTaskModel:
        return cast(MultiTaskModel, self.module)

    def follow(self, student: MultiTaskModel) -> None:
        """One EMA update, after an optimiser step (the first one copies the student)."""
        self.update_parameters(student)

    def restart_from(self, student: MultiTaskModel) -> None:
        """Become a copy of ``student`` (BCP's self-training starts from the pre-trained
        weights); the copy counts as the first average."""
        with torch.no_grad():
            for mine, theirs in zip(
                self.network.state_dict().values(), student.state_dict().values(), strict=True
            ):
                mine.copy_(theirs)
        self.n_averaged.fill_(1)

    def predict(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The teacher's outputs, without gradient (in the mode the module is in: training
        keeps dropout on, as SSL4MIS's teacher)."""
        with torch.no_grad():
            return cast(dict[str, torch.Tensor], self.network(x, meta))


def build_teacher(student: MultiTaskModel, terms: list[Term]) -> EmaTeacher | None:
    """The one EMA teacher the terms ask for, or None when none asks for one."""
    specs = {t.teacher for t in terms if t.teacher is not None}
    if not specs:
        return None
    if len(specs) > 1:
        raise ConfigError(
            "terms: one EMA teacher is kept; the terms ask for "
            + ", ".join(f"decay {s.decay} (ramp {s.ramp})" for s in specs)
        )
    return EmaTeacher(student, specs.pop())
