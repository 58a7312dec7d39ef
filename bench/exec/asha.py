"""ASHA that compares trials only within their grid cell, so every estimator gets the same search budget.

A plain ASHA over a whole suite would stop one estimator's trials because another estimator scores higher at
the same rung; here each (estimator, model, dataset, bits, recipe) cell has its own ASHA brackets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

from bench.suite import Trial


class CellASHA(FIFOScheduler):
    """``points``: the suite's trials, which a Tune trial's ``config["trial"]`` indexes (``bench.exec.ray_tune``)."""

    def __init__(self, points: Sequence[Trial], metric: str = "test_top1", mode: str = "max",
                 time_attr: str = "training_iteration", max_t: int = 100, grace_period: int = 1,
                 reduction_factor: float = 2, brackets: int = 1):
        super().__init__()
        self.points = tuple(points)
        self._kw = {"metric": metric, "mode": mode, "time_attr": time_attr, "max_t": max_t,
                    "grace_period": grace_period, "reduction_factor": reduction_factor, "brackets": brackets}
        self._cells: dict[str, AsyncHyperBandScheduler] = {}

    def _sched(self, trial) -> AsyncHyperBandScheduler:
        cell = self.points[trial.config["trial"]].cell  # every grid point (and seed) of one cell shares it
        if cell not in self._cells:
            self._cells[cell] = AsyncHyperBandScheduler(**self._kw)
        return self._cells[cell]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial) -> None:
        self._sched(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        decision = self._sched(trial).on_trial_result(tune_controller, trial, result)
        # a trial's last epoch is no rung: stopping it there would record a finished run as stopped
        last = result.get(self._kw["time_attr"], 0) >= self.points[trial.config["trial"]].spec.config.epochs
        return self.CONTINUE if last else decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._sched(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._sched(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"CellASHA over {len(self._cells)} cell(s)"
