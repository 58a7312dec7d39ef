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
#: who holds the lock, for the message a second execution gets: beside the lock file, not in it (filelock 3 opens
#: the lock file truncating it whenever another process tries to take it)
HOLDER_NAME = ".binbench.lock.json"


def _holder_text() -> str:
    import socket

    return (f"pid {os.getpid()} on host {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")


def _file_lock(path: Path) -> Any:
    """A non-blocking ``filelock.FileLock`` on ``path`` that never falls back to a soft lock: filelock 4 would use
    a marker file where the file system has no flock, which a killed driver leaves behind (filelock 3 refuses
    there, as binbench does)."""
    import inspect

    from filelock import FileLock

    strict = {"fallback_to_soft": False} if "fallback_to_soft" in inspect.signature(FileLock).parameters else {}
    return FileLock(path, timeout=0, **strict)


@contextlib.contextmanager
def results_lock(results: Path, suite_name: str) -> Iterator[Path]:
    """Hold ``<results>/.binbench.lock`` for the execution: a second one into the same folder is refused at once,
    naming the holder (``.binbench.lock.json``, whose path is yielded).

    A filelock lock on flock: the kernel releases it when the holding process dies (SIGKILL included), so a crashed
    run never blocks the folder.
    """
    import errno
    import json

    from filelock import Timeout

    path, holder = results / LOCK_NAME, results / HOLDER_NAME
    lock = _file_lock(path)
    try:
        lock.acquire()
    except Timeout:
        try:
            held = json.loads(holder.read_text() or "{}")
        except (OSError, ValueError):
            held = {}
        raise BinbenchError(f"results folder {results} is in use by `binbench suite run` of suite "
                            f"{held.get('suite', '?')!r} ({held.get('holder', 'another process')}); wait for it to "
                            "end, stop it, or pass another --results-dir") from None
    except (NotImplementedError, OSError) as exc:
        if isinstance(exc, NotImplementedError) or exc.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            raise BinbenchError(f"cannot lock {path}: this file system has no file locks; use a results folder on "
                                "one that has (NFSv4, a local disk)") from None
        raise BinbenchError(f"cannot create the lock file {path}: {exc.strerror or exc}: pass --results-dir a folder "
                            "you can write") from None
    try:
        holder.write_text(json.dumps({"suite": suite_name, "pid": os.getpid(), "holder": _holder_text()}))
        yield holder
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()  # before the lock goes: the next holder's file is its own
        lock.release()
