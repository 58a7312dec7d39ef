"""Trial functions for the local executor's tests: the executor's behaviour without training or MLflow."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def trial(trial: dict[str, Any], ctx: dict[str, Any], report=None, tags=None) -> str:
    """Logs ``pid`` to ``<ctx log>/<key>`` (one line per attempt), then does what ``trial["mode"]`` says."""
    log = Path(ctx["log"]) / trial["key"]
    with log.open("a") as f:
        f.write(f"{os.getpid()}\n")
    attempts = len(log.read_text().split())
    mode = trial["mode"]
    if mode == "raise":
        raise RuntimeError("training broke")
    if mode == "die" or (mode == "die_once" and attempts == 1):
        os.kill(os.getpid(), signal.SIGKILL)  # a worker lost mid-trial (out of memory, a kill)
    if mode == "sleep":
        time.sleep(600)
    if report is not None:
        report({"test_top1": 50.0})
    return "diverged" if mode == "diverge" else "finished"
