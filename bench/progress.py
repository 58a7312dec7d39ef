"""Console output of a run: a live step bar on a terminal, one plain line per epoch otherwise (a suite's lines:
``bench.exec.progress``)."""

from __future__ import annotations

import sys
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    """12.3 s, 4.5 min, 2.1 h: the unit a person reads at a glance."""
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds >= 0.1 else f"{seconds:.2g} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_elapsed(seconds: float) -> str:
    """``1 h 02 min``, ``24 min 10 s`` or ``41 s``: a measured wall time to the second, as tables state it
    (:func:`format_duration` rounds to a tenth of the unit, for progress lines)."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def format_flop(flop: float) -> str:
    """101 GFLOP, 3.2 TFLOP, 1.5 PFLOP, 12 EFLOP: three significant digits in the largest unit below the value."""
    units = (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6))
    for name, scale in units:
        if flop >= scale:
            return f"{flop / scale:.3g} {name}"
    return f"{flop:.3g} FLOP"


class _Bar:
    """A tqdm bar over one epoch's steps on a terminal (none elsewhere); ``update`` takes the steps done so far."""

    def __init__(self, out: TextIO | None, label: str, total: int):
        self.bar = None
        if out is not None:
            from tqdm import tqdm  # only where a terminal shows it

            self.bar = tqdm(total=total, desc=label, file=out, leave=False, unit="step", mininterval=0.2,
                            dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
