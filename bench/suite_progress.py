"""Live progress of a suite: one line per trial start and end, and an overall bar with an ETA on a terminal.

A Ray Tune ``Callback`` in the driver: it sees every trial start, end and error without the trials printing
anything (their output does not reach the driver). On a terminal the lines go through ``tqdm.write`` above a
bar of finished trials; elsewhere (a log file, CI) there is no bar and each end line carries the ETA instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from bench.progress import format_duration


def _status(result: dict[str, Any], planned: int | None) -> str:
    if result.get("diverged"):
        return "diverged"
    # Tune marks the last result done whether the trial ended or the scheduler (ASHA) stopped it: the epoch count
    # (one report per epoch) tells them apart
    if planned is not None and int(result.get("training_iteration", planned)) < planned:
        return "stopped"
    return "finished"


class SuiteProgress(Callback):
    """Prints ``trial n/N start LABEL (KEY)`` and ``trial n/N end LABEL top-1 xx.xx (status) in 12.3 s``.

    ``n`` numbers the trials in the order they start, so that a trial's end line carries its start line's number.
    The stream is looked up when printing, never stored: Tune pickles its callbacks with the experiment state.
    """

    def __init__(self, total: int, tty: bool | None = None, epochs: dict[str, int] | None = None):
        self.total = total
        self.epochs = epochs or {}  # trial key -> epochs it trains when nothing stops it
        self.tty = tty
        self.numbers: dict[str, int] = {}
        self.started: dict[str, float] = {}
        self.done = 0
        self.t0 = time.monotonic()
        self._bar: Any = None

    # -- output ----------------------------------------------------------------------------------------------
    def _stream(self) -> TextIO:
        return sys.stdout

    def _is_tty(self) -> bool:
        if self.tty is None:
            self.tty = hasattr(self._stream(), "isatty") and self._stream().isatty()
        return self.tty

    def _bar_or_none(self) -> Any:
        if self._bar is None and self._is_tty():
            try:
                from tqdm import tqdm
            except ImportError:  # an install without tqdm still gets the lines
                self.tty = False
                return None
            import shutil

            # a pseudo-terminal may report a 0 x 0 size, where tqdm draws nothing: assume 80 x 24 there
            sized = shutil.get_terminal_size((0, 0)).columns > 0
            self._bar = tqdm(total=self.total, desc="suite", unit="trial", file=self._stream(), dynamic_ncols=sized,
                             ncols=None if sized else 80, nrows=None if sized else 24)
        return self._bar

    def _line(self, text: str) -> None:
        bar = self._bar_or_none()
        if bar is not None:
            bar.write(text, file=self._stream())
        else:
            print(text, file=self._stream(), flush=True)

    # -- Tune's hooks ----------------------------------------------------------------------------------------
    def _number(self, trial: Any) -> int:
        if trial.trial_id not in self.numbers:
            self.numbers[trial.trial_id] = len(self.numbers) + 1
            self.total = max(self.total, len(self.numbers))
        return self.numbers[trial.trial_id]

    @staticmethod
    def _name(trial: Any) -> str:
        t = trial.config.get("trial", {})
        return f"{t.get('label', trial.trial_id)} ({t.get('key', trial.trial_id)})"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.monotonic())
        self._line(f"trial {self._number(trial)}/{self.total} start {self._name(trial)}")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(f"trial {self._number(trial)}/{self.total} retry {self._name(trial)} after an error "
                   "(continues from its last checkpoint)")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        top1 = result.get("test_top1")
        key = trial.config.get("trial", {}).get("key")
        planned = trial.config.get("epochs", self.epochs.get(key))
        top1_text = f"top-1 {top1:.2f}" if isinstance(top1, (int, float)) else "top-1 -"
        self._end(trial, top1_text, _status(result, int(planned) if planned is not None else None))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "top-1 -", "failed")

    def _end(self, trial: Any, top1: str, status: str) -> None:
        n = self._number(trial)
        took = time.monotonic() - self.started.get(trial.trial_id, self.t0)
        self.done += 1
        bar = self._bar_or_none()
        eta = ""
        if bar is None and self.done < self.total:  # the bar shows the ETA on a terminal; a log line says it here
            left = (time.monotonic() - self.t0) / self.done * (self.total - self.done)
            eta = f"; {self.done}/{self.total} done, ~{format_duration(left)} left"
        self._line(f"trial {n}/{self.total} end {self._name(trial)} {top1} ({status}) in {format_duration(took)}"
                   + eta)
        if bar is not None:
            bar.total = self.total
            bar.update(1)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}  # a live bar holds a stream: not picklable, not wanted in state


def expected_trials(cells: int, search: dict[str, Any] | None) -> int:
    """How many Tune trials a suite starts: each cell x samples x every grid-searched value of the space."""
    if not search:
        return cells
    n = cells * int(search.get("num_samples", 1))
    for spec in search["space"].values():
        (kind, args), = spec.items()
        if kind == "grid":
            n *= len(args)
    return n


def quiet_ray() -> dict[str, Any]:
    """Environment and logging that keep Ray's start-up banners, tips and tables off the console; returns the
    ``ray.init`` keyword arguments that do the rest. The suite's own progress lines replace them."""
    import logging
    import os

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the new output engine prints its tables even at verbose=0
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no CSV/JSON/TensorBoard loggers per trial
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return {"logging_level": logging.ERROR, "log_to_driver": False, "include_dashboard": False}
