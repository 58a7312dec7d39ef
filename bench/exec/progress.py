"""A suite's progress: one line per trial start and end, and an overall bar with an ETA on a terminal.

Executors report what happens to a trial through :class:`TrialEvents` (started, retried, ended, failed, closed),
in binbench's terms: the local executor calls it directly, and ``bench.exec.ray_tune`` adapts Ray Tune's callback
hooks to it. On a terminal the lines go through ``tqdm.write`` above a bar of finished trials; elsewhere (a log
file, CI) there is no bar and each end line carries the ETA instead.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from bench.progress import format_duration

if TYPE_CHECKING:
    from bench.suite import Trial


class TrialEvents(Protocol):
    """What an executor tells the driver about its trials. ``point`` is the executor's id of one run of a trial
    (a search runs one grid trial at several sampled points, each with its own id)."""

    def started(self, point: str, trial: Trial) -> None: ...

    def retried(self, point: str, trial: Trial) -> None: ...

    def ended(self, point: str, trial: Trial, status: str, top1: float | None) -> None: ...

    def failed(self, point: str, trial: Trial) -> None: ...

    def closed(self) -> None: ...


class SuiteLines:
    """Prints ``trial n/N start LABEL (KEY)`` and ``trial n/N end LABEL top-1 xx.xx (status) in 12.3 s``: the
    :class:`TrialEvents` of every executor.

    ``n`` numbers the trials in the order they start, so that a trial's end line carries its start line's number.
    The stream is looked up when printing, never stored: Tune pickles its callbacks with the experiment state.
    """

    def __init__(self, total: int, tty: bool | None = None):
        self.total = total
        self.tty = tty
        self.numbers: dict[str, int] = {}
        self.started_at: dict[str, float] = {}
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

    # -- the events ------------------------------------------------------------------------------------------
    def _number(self, point: str) -> int:
        if point not in self.numbers:
            self.numbers[point] = len(self.numbers) + 1
            self.total = max(self.total, len(self.numbers))
        return self.numbers[point]

    def started(self, point: str, trial: Trial) -> None:
        self.started_at.setdefault(point, time.monotonic())
        self._line(f"trial {self._number(point)}/{self.total} start {trial.label} ({trial.key})")

    def retried(self, point: str, trial: Trial) -> None:
        self._line(f"trial {self._number(point)}/{self.total} retry {trial.label} ({trial.key}) after an error "
                   "(continues from its last checkpoint)")

    def ended(self, point: str, trial: Trial, status: str, top1: float | None) -> None:
        self._end(point, trial, f"top-1 {top1:.2f}" if top1 is not None else "top-1 -", status)

    def failed(self, point: str, trial: Trial) -> None:
        self._end(point, trial, "top-1 -", "failed")

    def _end(self, point: str, trial: Trial, top1: str, status: str) -> None:
        n = self._number(point)
        took = time.monotonic() - self.started_at.get(point, self.t0)
        self.done += 1
        bar = self._bar_or_none()
        eta = ""
        if bar is None and self.done < self.total:  # the bar shows the ETA on a terminal; a log line says it here
            left = (time.monotonic() - self.t0) / self.done * (self.total - self.done)
            eta = f"; {self.done}/{self.total} done, ~{format_duration(left)} left"
        self._line(f"trial {n}/{self.total} end {trial.label} ({trial.key}) {top1} ({status}) in "
                   f"{format_duration(took)}" + eta)
        if bar is not None:
            bar.total = self.total
            bar.update(1)

    def closed(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}  # a live bar holds a stream: not picklable, not wanted in state
