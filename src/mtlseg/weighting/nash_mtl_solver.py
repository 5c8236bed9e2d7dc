"""What Nash-MTL needs of torchjd's solver beyond its public API: every solve of the
bargaining problem watched (a failure is never taken silently) and its state restored from
a checkpoint. Kept apart because it reaches into ``_NashMTLWeighting``'s attributes
(``prob``, ``prvs_alpha``, ``normalization_factor``, ``_init_optim_problem``): a torchjd
release that renames them breaks this file only (pinned: torchjd 0.18)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

OK_STATUSES = ("optimal", "optimal_inaccurate")


class SolveWatch:
    """Wraps the cvxpy problem's ``solve`` of a torchjd Nash-MTL weighting: a solve that
    raises or ends with a status other than optimal marks a failure, which ``take_failure``
    reports once. torchjd (like the reference code) would otherwise keep the previous alpha
    silently."""

    def __init__(self, weighting: Any) -> None:
        self.problem = weighting.prob
        self.failed = False
        solve = self.problem.solve

        def watched_solve(*args: Any, **kwargs: Any) -> Any:
            try:
                with warnings.catch_warnings():  # torchjd's problem is not DPP: no speed-up
                    warnings.filterwarnings("ignore", message=".*not DPP")
                    result = solve(*args, **kwargs)
            except Exception:
                self.failed = True
                raise
            if self.problem.status not in OK_STATUSES:
                self.failed = True
            return result

        self.problem.solve = watched_solve
        # torchjd only builds the problem at its step 0; keep it from rebuilding (unwatched)
        weighting._init_optim_problem = lambda: None

    def take_failure(self) -> bool:
        """Whether a solve failed since the last call."""
        failed, self.failed = self.failed, False
        return failed


def restore_solver(weighting: Any, state: dict[str, Any]) -> None:
    """Put a checkpoint's Nash-MTL state (last alpha, normalisation, step) back into a fresh
    torchjd weighting, its problem rebuilt with the restored alpha as the start."""
    weighting.prvs_alpha = np.asarray(state["alpha"], dtype=np.float32)
    weighting.normalization_factor = np.asarray(state["norm"], dtype=np.float64).reshape(1)
    weighting._init_optim_problem()
    weighting.step = float(state["step"])
