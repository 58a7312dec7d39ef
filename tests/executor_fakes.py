"""A trial body for the local executor's tests: the executor's behaviour without training or MLflow."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from bench.exec.trial import SuiteContext


@dataclass(frozen=True)
class FakeTrial:
    """What an executor reads of a trial (its key and label), and what the fake body should do."""

    key: str
    label: str
    mode: str


def context(log_dir: str) -> SuiteContext:
    """A suite context whose results folder is where the fake body logs its attempts."""
    from pathlib import Path

    return SuiteContext("sqlite:///unused.db", "0", "parent", Path(log_dir), False, 1, 0.0)


def trial(trial: FakeTrial, ctx: SuiteContext, report=None, *, tags=None, **_) -> str:
    """Logs ``pid`` to ``<results>/<key>`` (one line per attempt), then does what ``trial.mode`` says."""
    log = ctx.results_dir / trial.key
    with log.open("a") as f:
        f.write(f"{os.getpid()}\n")
    attempts = len(log.read_text().split())
    if trial.mode == "raise":
        raise RuntimeError("training broke")
    if trial.mode == "die" or (trial.mode == "die_once" and attempts == 1):
        os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-trial (out of memory, a kill)
    if trial.mode == "sleep":
        time.sleep(600)
    if report is not None:
        report({"test_top1": 50.0})
    return "diverged" if trial.mode == "diverge" else "finished"
