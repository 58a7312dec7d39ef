"""Live progress of a suite: one line per trial start and end, and an overall bar with an ETA on a terminal.

A Ray Tune ``Callback`` in the driver: it sees every trial start, end and error without the trials printing
anything (their output does not reach the driver). On a terminal the lines go through ``tqdm.write`` above a
bar of finished trials; elsewhere (a log file, CI) there is no bar and each end line carries the ETA instead.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from bench.progress import SuiteLines


class SuiteProgress(SuiteLines, Callback):
    """The suite's progress lines (:class:`bench.progress.SuiteLines`) as a Ray Tune callback in the driver."""


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
