"""Faults of a suite execution: a second driver into the same folder, a killed trial worker, a killed driver,
Ctrl-C, and arguments, addresses, folders and tracking stores that cannot work, refused in seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.cli import main

from .conftest import REPO, cli_here

TINY_SUITE = {"name": "faults", "grid": {"estimators": ["ste", "clipped_ste"], "models": ["mlp"],
                                         "datasets": ["digits"], "seeds": [0]},
              "defaults": {"epochs": 2, "model_args": {"hidden": [32]}}}


def write_suite(tmp_path: Path, body: dict, name: str = "suite.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(body))
    return p


def cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def start_cli(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def stop_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """The driver and what it started (Ray's processes share its session)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _store_ready(uri: str) -> bool:
    """True once the driver created the SQLite store and its first run (read-only: a client that opened a store
    being created by the driver would race its schema creation)."""
    import sqlite3

    if not uri.startswith("sqlite:///"):
        return True
    db = Path(uri[len("sqlite:///"):])
    if not db.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("select count(*) from runs").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.Error:
        return False


def runs(uri: str, suite: str = "faults") -> list:
    """Every run of the suite's experiment (parent and trials), through MLflow's API."""
    from mlflow.tracking import MlflowClient

    if not _store_ready(uri):
        return []

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(suite)
    if exp is None:
        return []
    return list(client.search_runs([exp.experiment_id], max_results=1000))


def trials(uri: str, suite: str = "faults") -> list:
    return [r for r in runs(uri, suite) if r.data.tags.get("binbench.kind") == "trial"]


def wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = cond()
        except Exception:  # the store is being created
            value = None
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the suite ended before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(poll)
    pytest.fail(f"not within {timeout} s: {what}")


def assert_each_trial_finished_once(uri: str, keys: set[str], suite: str = "faults") -> None:
    all_runs = runs(uri, suite)
    assert not [r.info.run_name for r in all_runs if r.info.status == "RUNNING"], "a run was left RUNNING"
    finished = sorted(r.data.tags["binbench.key"] for r in all_runs
                      if r.data.tags.get("binbench.kind") == "trial" and r.info.status == "FINISHED")
    assert finished == sorted(keys), "exactly one FINISHED run per trial"


# -- item 1 and 2: a second driver, a killed worker, a killed driver, then --resume --------------------------
# the local executor with one trial at a time runs it in the driver's own process: two workers, so that a worker
# can be killed alone
CONCURRENCY = {"local": "2", "ray": "1"}


@pytest.mark.slow  # ~110 s on 2 cores (each executor)
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_second_driver_refused_killed_worker_and_driver_leave_nothing_running(tmp_path, executor):
    body = {**TINY_SUITE, "grid": {**TINY_SUITE["grid"], "estimators": ["ste", "clipped_ste", "approx_sign"],
                                   "seeds": [0, 1]}, "defaults": {"epochs": 40, "model_args": {"hidden": [128, 128]}}}
    path = write_suite(tmp_path, body)
    res = tmp_path / "res"
    uri = f"sqlite:///{res / 'mlflow.db'}"
    from bench.suite import load_suite

    keys = {t.key for t in load_suite(str(path)).trials}
    # packs of 3 (the 6 trials would make one pack, whose members all finish at once): the driver is killed after
    # the first pack finished, with the second one's trials unfinished
    proc = start_cli("suite", "run", str(path), "--results-dir", str(res), "--max-concurrent", CONCURRENCY[executor],
                     "--executor", executor, "--pack", "3")
    try:
        wait_for(lambda: [r for r in trials(uri) if r.info.status == "RUNNING" and r.data.metrics],
                 240, "a trial logged an epoch", proc)
        # 1. the same suite into the same folder again: refused at once, naming the running one
        t0 = time.time()
        second = cli("suite", "run", str(path), "--results-dir", str(res), timeout=120)
        assert second.returncode == 2 and time.time() - t0 < 30
        err = second.stderr.strip()
        assert "Traceback" not in second.stderr and len(err.splitlines()) == 1, second.stderr
        assert f"is in use by `binbench suite run` of suite 'faults' (pid {proc.pid} on host " in err
        assert "since 20" in err and "pass another --results-dir" in err
        # 2a. a trial worker dies (SIGKILL): the executor retries the trial from its checkpoint (in a new worker),
        # the retry ends the lost run
        victim = wait_for(lambda: [r for r in trials(uri) if r.info.status == "RUNNING" and r.data.metrics], 120,
                          "a trial running", proc)[0]
        os.kill(int(victim.data.tags["worker"].split()[1]), signal.SIGKILL)
        wait_for(lambda: [r for r in trials(uri) if r.info.run_id == victim.info.run_id and r.info.status == "KILLED"
                          and r.data.tags["binbench.status"] == "worker lost; retried"], 180,
                 "the retried trial ended the lost attempt's run", proc)
        wait_for(lambda: any(r.info.status == "FINISHED" for r in trials(uri)), 300, "a trial finished", proc)
        # 2b. the driver dies (SIGKILL) mid-suite
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        time.sleep(1)
        stop_group(proc)  # what the driver left behind (Ray's processes)
    before = runs(uri)
    assert any(r.info.status == "RUNNING" and r.data.tags.get("binbench.kind") == "suite" for r in before)
    done_before = {r.info.run_id for r in before if r.info.status == "FINISHED"
                   and r.data.tags.get("binbench.kind") == "trial"}
    assert 1 <= len(done_before) < 6
    # the holder file still names the dead driver: its lock holds nothing, --resume proceeds
    assert str(proc.pid) in (res / ".binbench.lock.json").read_text()
    out = cli("suite", "run", str(path), "--results-dir", str(res), "--resume", "--executor", executor, timeout=500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "left RUNNING by an interrupted execution marked KILLED" in out.stdout
    assert_each_trial_finished_once(uri, keys)
    after = {r.info.run_id: r for r in runs(uri)}
    assert done_before <= {i for i, r in after.items() if r.info.status == "FINISHED"}  # not trained again
    assert after[victim.info.run_id].info.status == "KILLED"
    assert not (res / ".binbench.lock.json").exists()  # released and cleared on a normal exit


@pytest.mark.slow  # ~85 s on 2 cores (each executor)
@pytest.mark.parametrize("executor, concurrent", [("local", "1"), ("local", "2"), ("ray", "1")])
def test_ctrl_c_ends_every_run_and_resume_completes(tmp_path, executor, concurrent):
    body = {**TINY_SUITE, "defaults": {"epochs": 25, "model_args": {"hidden": [128, 128]}}}
    path = write_suite(tmp_path, body)
    res = tmp_path / "res"
    uri = f"sqlite:///{res / 'mlflow.db'}"
    proc = start_cli("suite", "run", str(path), "--results-dir", str(res), "--max-concurrent", concurrent,
                     "--executor", executor)
    try:
        wait_for(lambda: [r for r in trials(uri) if r.info.status == "RUNNING" and r.data.metrics], 240,
                 "a trial logged an epoch", proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole foreground group
        proc.wait(timeout=90)
        err = proc.stderr.read()
    finally:
        stop_group(proc)
    assert "Traceback" not in err, err[-3000:]
    all_runs = runs(uri)
    assert not [r.info.run_name for r in all_runs if r.info.status == "RUNNING"]
    parent = [r for r in all_runs if r.data.tags.get("binbench.kind") == "suite"]
    assert [r.info.status for r in parent] == ["KILLED"]
    out = cli("suite", "run", str(path), "--results-dir", str(res), "--resume", "--executor", executor, timeout=500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    from bench.suite import load_suite

    assert_each_trial_finished_once(uri, {t.key for t in load_suite(str(path)).trials})


# -- item 3: resources, endpoints and folders that cannot work, refused in seconds ----------------------------
@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers (a hung server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


BAD_RUN_ARGS = {
    "cpus": (["--cpus-per-trial", str((os.cpu_count() or 1) + 1)], "is more than this machine's"),
    "gpus": (["--gpus-per-trial", "64"], "GPU(s) torch can use: a trial would wait forever"),
    "cpus0": (["--cpus-per-trial", "0"], "--cpus-per-trial must be an integer >= 1"),
    "gpus-neg": (["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    "concurrent": (["--max-concurrent", "0"], "--max-concurrent must be an integer >= 1"),
    "address-form": (["--address", "headnode"], "--address must be auto or HOST:PORT"),
    "address-dead": (["--address", "127.0.0.1:{dead}"], "no Ray cluster answers at 127.0.0.1:"),
    "tracking-dead": (["--tracking-uri", "http://127.0.0.1:{dead}"], "does not answer (Connection refused)"),
    "tracking-silent": (["--tracking-uri", "http://127.0.0.1:{silent}"], "is not usable"),
    "tracking-sqlite-folder": (["--tracking-uri", "sqlite:////nonexistent/x/mlflow.db"],
                               "folder /nonexistent/x does not exist"),
    "results-file": (["--results-dir", "{file}"], "is a file, not a folder"),
    "results-under-file": (["--results-dir", "{file}/sub"], "cannot create results folder"),
    "results-readonly-fs": (["--results-dir", "/proc/binbench-results"], "cannot create results folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUN_ARGS))
def test_bad_run_arguments_refused_in_seconds(tmp_path, capsys, silent_server, case):
    argv, needle = BAD_RUN_ARGS[case]
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    fill = {"dead": _dead_port(), "silent": silent_server, "file": afile}
    argv = [a.format(**fill) for a in argv]
    path = write_suite(tmp_path, TINY_SUITE)
    res = tmp_path / "res"
    if "--results-dir" not in argv:
        argv += ["--results-dir", str(res)]
    t0 = time.time()
    code = main(["suite", "run", str(path), *argv])
    took = time.time() - t0
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert took < 20, f"took {took:.1f} s"
    import ray

    assert not ray.is_initialized()
    if not case.startswith("tracking"):  # nothing was created: the store is never touched
        assert not (res / "mlflow.db").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes any folder")
def test_unwritable_results_folder(tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    res.chmod(0o500)
    try:
        code = main(["suite", "run", str(write_suite(tmp_path, TINY_SUITE)), "--results-dir", str(res)])
    finally:
        res.chmod(0o700)
    err = capsys.readouterr().err
    assert code == 2 and "is not readable and writable by you" in err and err.count("\n") == 1


def test_lock_held_by_another_process_is_refused_and_freed_at_its_death(tmp_path, capsys):
    from bench.exec.checks import results_lock

    res = tmp_path / "res"
    res.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from bench.exec.checks import results_lock\n"
                               "with results_lock(Path(sys.argv[1]), 'other'):\n print('held', flush=True); "
                               "time.sleep(600)", str(res)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Exception) as exc:
            with results_lock(res, "faults"):
                pass
        assert f"suite 'other' (pid {holder.pid} on host {socket.gethostname()} since" in str(exc.value)
    finally:
        holder.kill()
        holder.wait()
    with results_lock(res, "faults") as lock:  # the kernel freed it with the process
        assert f"pid {os.getpid()}" in lock.read_text()


@pytest.mark.parametrize("error, says", [(OSError(38, "Function not implemented"), "has no file locks"),
                                         (NotImplementedError("no flock"), "has no file locks"),
                                         (PermissionError(13, "Permission denied"), "cannot create the lock file")])
def test_a_lock_that_cannot_be_taken_is_one_line(tmp_path, monkeypatch, error, says):
    """A file system without flock (filelock 3 raises NotImplementedError, 4 an ENOSYS OSError when told not to
    fall back to a soft lock) or a lock file that cannot be created: one line, nothing held."""
    from types import SimpleNamespace

    from bench.errors import BinbenchError
    from bench.exec import checks

    def acquire():
        raise error

    monkeypatch.setattr(checks, "_file_lock", lambda path: SimpleNamespace(acquire=acquire))
    with pytest.raises(BinbenchError) as exc:
        with checks.results_lock(tmp_path, "faults"):
            pass
    assert says in str(exc.value) and "\n" not in str(exc.value)
    assert not (tmp_path / checks.HOLDER_NAME).exists()


@pytest.mark.parametrize("command", [["report", "smoke"], ["ui", "smoke"]])
def test_dead_tracking_server_is_one_line_in_seconds_for_report_and_ui(command):
    import socket
    import time

    with socket.socket() as sock:  # a port nobody listens on once this block closes it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    out = cli_here(*command, "--tracking-uri", f"http://127.0.0.1:{port}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"tracking server http://127.0.0.1:{port} does not answer" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and time.monotonic() - start < 30
