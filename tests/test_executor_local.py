"""The local executor (bench.exec.local) on fake trials: retries after an exception and after a worker's
death, as Ray Tune's FailureConfig(max_failures=2) does; a killed or interrupted driver leaves no worker behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.exec.local import MAX_FAILURES, run_local
from bench.exec.progress import SuiteLines
from bench.exec.trial import Pack

from . import executor_fakes
from .conftest import REPO


class NoWatch:
    lost = False

    def check(self) -> None:
        pass


def run(tmp_path: Path, modes: list[str], workers: int, sizes: list[int] | None = None) -> None:
    """Fake trials with these modes, alone or in packs of ``sizes`` consecutive trials."""
    trials = [executor_fakes.FakeTrial(f"k{i}", f"t{i}", m) for i, m in enumerate(modes)]
    packs, i = [], 0
    for n in sizes or [1] * len(trials):
        packs.append(Pack(tuple(trials[i:i + n])))
        i += n
    run_local(packs, executor_fakes.context(str(tmp_path)), workers, SuiteLines(len(trials), tty=False), NoWatch(),
              body=executor_fakes.trial)


def attempts(tmp_path: Path, key: str) -> list[int]:
    return [int(p) for p in (tmp_path / key).read_text().split()]


def ends(out: str) -> dict[str, str]:
    return dict(re.findall(r" end (t\d) \(k\d\) top-1 \S+ \((\w+)\)", out))


@pytest.mark.parametrize("workers", [1, 2])
def test_exception_is_retried_then_failed_and_divergence_is_a_result(tmp_path, capsys, workers):
    run(tmp_path, ["raise", "ok", "diverge"], workers)
    out = capsys.readouterr().out
    assert len(attempts(tmp_path, "k0")) == 1 + MAX_FAILURES and len(attempts(tmp_path, "k2")) == 1
    assert out.count("retry t0 (k0) after an error") == MAX_FAILURES
    assert ends(out) == {"t0": "failed", "t1": "finished", "t2": "diverged"}
    assert "top-1 50.00" in out
    if workers == 1:  # in the driver's own process: nothing started
        assert set(attempts(tmp_path, "k1")) == {os.getpid()}


@pytest.mark.parametrize("mode, status, tries", [("die_once", "finished", 2), ("die", "failed", 1 + MAX_FAILURES)])
def test_dead_worker_is_replaced_and_its_trial_retried(tmp_path, capsys, mode, status, tries):
    run(tmp_path, [mode, "ok", "ok"], 2)
    out = capsys.readouterr().out
    pids = attempts(tmp_path, "k0")
    assert len(pids) == tries and len(set(pids)) == tries  # each attempt in a new worker
    assert ends(out) == {"t0": status, "t1": "finished", "t2": "finished"}
    assert out.count("retry t0") == tries - 1


@pytest.mark.parametrize("workers", [1, 2])
def test_a_pack_reports_each_member_and_a_diverged_member_ends_at_once(tmp_path, capsys, workers):
    run(tmp_path, ["ok", "diverge", "ok", "ok"], workers, sizes=[3, 1])
    out = capsys.readouterr().out
    assert ends(out) == {"t0": "finished", "t1": "diverged", "t2": "finished", "t3": "finished"}
    # each member's own top-1 on its own end line; the diverged member's end line before its pack's others
    assert re.search(r"end t2 \(k2\) top-1 52.00", out) and re.search(r"end t0 \(k0\) top-1 50.00", out)
    assert out.index("end t1 ") < out.index("end t0 ")
    assert len(re.findall(r"trial \d+/4 start", out)) == 4


def test_a_failing_pack_is_retried_whole_then_its_open_members_fail(tmp_path, capsys):
    run(tmp_path, ["ok", "raise", "ok"], 1, sizes=[3])
    out = capsys.readouterr().out
    assert ends(out) == {"t0": "failed", "t1": "failed", "t2": "failed"}
    assert len(attempts(tmp_path, "k0")) == 1 + MAX_FAILURES and not (tmp_path / "k2").exists()
    assert out.count("retry t0 (k0)") == MAX_FAILURES and out.count("retry t1 (k1)") == MAX_FAILURES


DRIVER = """
import sys
from bench.exec.local import run_local
from bench.exec.progress import SuiteLines
from bench.exec.trial import Pack
from tests import executor_fakes

class NoWatch:
    lost = False
    def check(self): pass

trials = [Pack((executor_fakes.FakeTrial(f"k{i}", f"t{i}", "sleep"),)) for i in range(3)]
try:
    run_local(trials, executor_fakes.context(sys.argv[1]), 2, SuiteLines(3, tty=False), NoWatch(),
              body=executor_fakes.trial)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_no_worker_outlives_its_driver(tmp_path, sig):
    # the driver starts with Ctrl-C's default action, as from a shell: a disposition an earlier in-process test
    # left ignored (Ray's start-up in this process, say) would otherwise be inherited and the SIGINT ignored
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not all((tmp_path / k).exists() for k in ("k0", "k1")):
            assert driver.poll() is None, driver.stderr.read()[-2000:]
            time.sleep(0.2)
        workers = [attempts(tmp_path, k)[0] for k in ("k0", "k1")]
        forkserver = {_ppid(p) for p in workers}
        assert driver.pid not in forkserver  # workers fork from the forkserver, not from the driver
        driver.send_signal(sig)
        driver.wait(timeout=150)  # a hang fails; a loaded 2-core machine may take a minute to stop its workers
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(p) for p in [*workers, *forkserver]):
            time.sleep(0.2)
        assert not [p for p in [*workers, *forkserver] if _alive(p)], "a worker outlived its driver"
        if sig == signal.SIGINT:
            err = driver.stderr.read()
            assert "interrupted" in err and "Traceback" not in err, err[-2000:]  # workers stopped quietly
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
