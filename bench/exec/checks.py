"""What ``binbench suite run`` checks in seconds, before anything starts (no folder, no Ray, no MLflow run): the
command-line numbers against this machine, the Ray address (a socket probe), the trials' data, the results folder,
and its lock (one suite execution per results folder)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import BinbenchError
from bench.suite import Suite


# -- checks before anything starts ------------------------------------------------------------------------
def check_arguments(cpus_per_trial: Any, gpus_per_trial: Any, max_concurrent: Any, address: str | None) -> None:
    """The command-line numbers, against what this machine has (a cluster is checked once joined)."""
    if isinstance(cpus_per_trial, bool) or not isinstance(cpus_per_trial, int) or cpus_per_trial < 1:
        raise BinbenchError(f"--cpus-per-trial must be an integer >= 1, got {cpus_per_trial!r}")
    if isinstance(gpus_per_trial, bool) or not isinstance(gpus_per_trial, (int, float)) or not gpus_per_trial >= 0:
        raise BinbenchError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial!r}")
    if gpus_per_trial > 1 and not float(gpus_per_trial).is_integer():
        raise BinbenchError(f"--gpus-per-trial above 1 must be a whole number, got {gpus_per_trial!r}")
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int)
                                       or max_concurrent < 1):
        raise BinbenchError(f"--max-concurrent must be an integer >= 1, got {max_concurrent!r}")
    check_address(address)
    if address:
        return
    cpus = os.cpu_count() or 1
    if cpus_per_trial > cpus:
        raise BinbenchError(f"--cpus-per-trial {cpus_per_trial} is more than this machine's {cpus} CPU(s): a trial "
                            f"would wait forever; give --cpus-per-trial {cpus} or less (or --address a cluster)")
    if gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus_per_trial > gpus:
            raise BinbenchError(f"--gpus-per-trial {gpus_per_trial:g} but this machine has {gpus} GPU(s) torch can "
                                f"use: a trial would wait forever; give --gpus-per-trial "
                                f"{'0' if not gpus else f'{gpus} or less'}")


def check_address(address: str | None) -> None:
    if address is None:
        return
    if address == "auto":
        return
    hp = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, sep, port = hp.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BinbenchError(f"--address must be auto or HOST:PORT (ray://HOST:PORT for Ray Client), got {address!r}")


def probe_address(address: str, timeout: float = 3.0) -> None:
    """A Ray head that does not answer is reported in seconds (ray.init would print warnings for minutes)."""
    import socket

    if address == "auto":
        if not os.environ.get("RAY_ADDRESS") and not Path("/tmp/ray/ray_current_cluster").exists():
            raise BinbenchError("--address auto found no running Ray cluster on this machine (no RAY_ADDRESS, no "
                                "/tmp/ray/ray_current_cluster): start one with `ray start --head` or give HOST:PORT")
        return
    hp = address.split("://", 1)[1] if address.startswith("ray://") else address
    host, _, port = hp.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise BinbenchError(f"no Ray cluster answers at {address} ({why} within {timeout:g} s): start its head with "
                            f"`ray start --head --port {port}` or fix --address") from None


def check_results_dir(results_dir: str | os.PathLike) -> Path:
    """The results folder: created if missing; a file, or a folder this user cannot write, is an error."""
    p = Path(results_dir).expanduser()
    try:
        p = p.resolve()
        if p.exists() and not p.is_dir():
            raise BinbenchError(f"results folder {p} is a file, not a folder: pass --results-dir a folder (it is "
                                "created if missing)")
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BinbenchError(f"cannot create results folder {p}: {exc.strerror or exc}: pass --results-dir a "
                            "folder you can write") from None
    if not os.access(p, os.R_OK | os.W_OK | os.X_OK):
        raise BinbenchError(f"results folder {p} is not readable and writable by you: fix its permissions or pass "
                            "another --results-dir")
    return p


def check_trial_data(suite: Suite) -> None:
    """A trial's data must be where it will read it (a data root of the suite's or ``--data-root``)."""
    from bench.suite import SuiteError, missing_data

    problems = missing_data(suite)
    if problems:
        raise SuiteError(suite.path, problems)


# -- one suite execution per results folder -----------------------------------------------------------------
LOCK_NAME = ".binbench.lock"


def _holder_text() -> str:
    import socket

    return (f"pid {os.getpid()} on host {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")


@contextlib.contextmanager
def results_lock(results: Path, suite_name: str) -> Iterator[Path]:
    """Hold ``<results>/.binbench.lock`` for the execution: a second one into the same folder is refused at once.

    An fcntl lock: the kernel releases it when the holding process dies (SIGKILL included), so a crashed run never
    blocks the folder; the file keeps who holds it for the message.
    """
    import fcntl
    import json

    path = results / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BinbenchError(f"cannot create the lock file {path}: {exc.strerror}: pass --results-dir a folder you "
                            "can write") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            held = json.loads(os.read(fd, 4096).decode() or "{}")
        except (OSError, ValueError):
            held = {}
        os.close(fd)
        who = held.get("holder", "another process")
        raise BinbenchError(f"results folder {results} is in use by `binbench suite run` of suite "
                            f"{held.get('suite', '?')!r} ({who}); wait for it to end, stop it, or pass another "
                            "--results-dir") from None
    except OSError as exc:  # a file system without locks: say so rather than risk two writers
        os.close(fd)
        raise BinbenchError(f"cannot lock {path} ({exc.strerror}): this file system has no file locks; use a "
                            "results folder on one that has (NFSv4, a local disk)") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"suite": suite_name, "pid": os.getpid(), "holder": _holder_text()}).encode())
        os.fsync(fd)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the lock
