"""Console output of a run (a live step bar on a terminal, one plain line per epoch otherwise) and of a suite."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """12.3 s, 4.5 min, 2.1 h: the unit a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds:.2g} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_flop(flop: float) -> str:
    """101 GFLOP, 3.2 TFLOP, 1.5 PFLOP, 12 EFLOP: three significant digits in the largest unit below the value."""
    units = (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6))
    for name, scale in units:
        if flop >= scale:
            return f"{flop / scale:.3g} {name}"
    return f"{flop:.3g} FLOP"


class _Bar:
    def __init__(self, out: TextIO | None, label: str, total: int):
        self.out, self.label, self.total = out, label, total
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        if self.out is None:
            return
        now = time.perf_counter()
        if now - self.last < 0.2 and n < self.total:
            return
        self.last = now
        width = 24
        done = int(width * n / max(1, self.total))
        rate = n / max(1e-9, now - self.t0)
        eta = (self.total - n) / max(1e-9, rate)
        self.out.write(f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {n}/{self.total} "
                       f"{rate:.1f} it/s eta {eta:.0f}s ")
        self.out.flush()

    def close(self) -> None:
        if self.out is not None:
            self.out.write("\r" + " " * 80 + "\r")
            self.out.flush()


class Reporter:
    """Prints a run's progress; ``enabled=False`` keeps it silent (library use, Ray trials)."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()

    def _print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def start(self, cfg, params: dict[str, int], device) -> None:
        est = cfg.estimator if cfg.w_bits == 1 else "fp"
        self._print(f"binbench run: {est} / {cfg.model} / {cfg.dataset} / {cfg.bits} / recipe {cfg.recipe} / "
                    f"seed {cfg.seed} / {cfg.epochs} epochs / device {device} / {params['total']:,} params")

    def epoch_bar(self, stage, epoch: int, total: int) -> _Bar:
        """A progress bar over one epoch's steps of ``stage`` (a ``bench.spec.StagePlan``)."""
        return _Bar(self.stream if self.tty else None, f"{stage.name} {epoch + 1}/{stage.epochs}", total)

    def epoch(self, r: dict[str, Any]) -> None:
        modes = [k[5:-5] for k in r if k.startswith("test_") and k.endswith("_top1") and k != "test_top1"]
        extra = "".join(f" {m} {r[f'test_{m}_top1']:6.2f}" for m in modes[1:])
        head = f"test top1 ({modes[0]})" if modes else "test top1"
        if r.get("diverged"):
            self._print(f"[{r['stage_name']}] epoch {r['epoch'] + 1:3d}  train loss {r['train_loss']}  DIVERGED")
            return
        qe = f"  qe {r['diag/qe']:.4f}" if "diag/qe" in r else ""
        self._print(f"[{r['stage_name']}] epoch {r['epoch'] + 1:3d}  lr {r['lr']:.4g}  train loss "
                    f"{r['train_loss']:.4f} acc {r['train_top1']:6.2f}  {head} {r['test_top1']:6.2f}{extra}{qe}  "
                    f"({r['epoch_seconds']:.2f}s)")

    def finish(self, res) -> None:
        if res.status == "diverged":
            self._print(f"DIVERGED: {res.message}")
            return
        modes = "  ".join(f"{m} {v:.2f}" for m, v in res.eval_modes.items()) if len(res.eval_modes) > 1 else ""
        top5 = f"  top5 {res.top5:.2f}" if res.top5 is not None else ""
        self._print(f"final top1 {res.top1:.2f}{top5}  best top1 {res.best_top1:.2f} (epoch {res.best_epoch})  "
                    f"{res.epoch_seconds:.2f} s/epoch" + (f"\neval modes: {modes}" if modes else ""))


# -- a suite's progress: one line per trial start and end ---------------------------------------------------
def _status(result: dict[str, Any], planned: int | None) -> str:
    if result.get("diverged"):
        return "diverged"
    # Tune marks the last result done whether the trial ended or the scheduler (ASHA) stopped it: the epoch count
    # (one report per epoch) tells them apart
    if planned is not None and int(result.get("training_iteration", planned)) < planned:
        return "stopped"
    return "finished"


class SuiteLines:
    """Prints ``trial n/N start LABEL (KEY)`` and ``trial n/N end LABEL top-1 xx.xx (status) in 12.3 s``.

    Any executor calls its hooks (named as Ray Tune's callback hooks) with objects that have ``trial_id``,
    ``config`` (``{"trial": {...}}``) and ``last_result``; :class:`bench.exec.ray_tune.SuiteProgress` is the Ray
    Tune callback, the local executor calls them itself, so both print the same lines.

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

    # -- the hooks (Tune's names) ----------------------------------------------------------------------------
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
