"""A pack body for the local executor's tests: the executor's behaviour without training or MLflow."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

from bench.exec.trial import MemberReport, Pack, SuiteContext


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


def trial(pack: Pack, ctx: SuiteContext, report=None, *, tags=None, **_) -> tuple[str, ...]:
    """For each member: logs ``pid`` to ``<results>/<key>`` (one line per attempt), then does what its ``mode``
    says; a member whose mode is "diverge" ends (and says so) before the next member starts."""
    statuses = []
    for i, t in enumerate(pack.trials):
        log = ctx.results_dir / t.key
        with log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        attempts = len(log.read_text().split())
        if t.mode == "raise":
            raise RuntimeError("training broke")
        if t.mode == "die" or (t.mode == "die_once" and attempts == 1):
            os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-trial (out of memory, a kill)
        if t.mode == "sleep":
            time.sleep(600)
        status = "diverged" if t.mode == "diverge" else "finished"
        if report is not None:
            report(MemberReport(i, {"test_top1": 50.0 + i}))
            if status == "diverged":
                report(MemberReport(i, {}, status))
        statuses.append(status)
    return tuple(statuses)
