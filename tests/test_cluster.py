"""The cluster path with real parts: a two-node Ray cluster with token authentication that loses a node mid-suite,
and a real ``mlflow server`` as the tracking store, read back by ``binbench report`` and stopped mid-suite.

On one machine the results folder is shared by construction; a real cluster needs it on shared storage (NFS, a
cloud URI) because trials write checkpoints there from every node.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.suite import load_suite

from .test_faults import (
    assert_each_trial_finished_once,
    cli,
    start_cli,
    stop_group,
    trials,
    wait_for,
    write_suite,
)

SUITE = {"name": "faults", "grid": {"estimators": ["ste", "clipped_ste"], "models": ["mlp"], "datasets": ["digits"],
                                    "seeds": [0, 1]},
         "defaults": {"epochs": 40, "model_args": {"hidden": [128, 128]}}}


def one_line(out: subprocess.CompletedProcess, needle: str) -> None:
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stdout[-1000:] + out.stderr[-2000:]
    assert "Traceback" not in out.stderr and err and needle in err[-1], out.stderr[-2000:]


# -- 5a: a two-node Ray cluster loses its worker node mid-suite ---------------------------------------------
CLUSTER = """
import sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    print(cluster.address, worker.node_id, flush=True)
    for line in sys.stdin:
        if line.strip() == "remove":
            cluster.remove_node(worker)
            print("removed", flush=True)
        elif line.strip() == "quit":
            break
finally:
    cluster.shutdown()
"""


class RayCluster:
    """A head and a second node (separate raylets, 1 CPU each) with Ray 2.60's token authentication on, run by a
    helper process (its own Ray state, whatever this process imported before); every node shares its session."""

    def __init__(self):
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}  # every node, the driver
        self.proc = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True, env={**os.environ, **self.env})
        self.address, self.worker_node_id = self._line(180).split()

    def _line(self, timeout: float) -> str:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            pytest.fail(f"the Ray cluster helper said nothing within {timeout} s")
        return line.strip()

    def remove_worker(self) -> None:
        self.proc.stdin.write("remove\n")
        self.proc.stdin.flush()
        assert self._line(120) == "removed"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=90)
            except (OSError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of the nodes is left
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def ray_cluster():
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.mark.slow  # ~3 minutes on 2 cores
def test_two_node_cluster_loses_a_node_and_every_trial_finishes_once(tmp_path, ray_cluster):
    cluster = ray_cluster
    path = write_suite(tmp_path, SUITE)
    res = tmp_path / "res"
    uri = f"sqlite:///{res / 'mlflow.db'}"
    keys = {t.key for t in load_suite(str(path)).trials}
    # a driver without the cluster's token, and a trial no node can hold: one line each, nothing run
    t0 = time.time()
    one_line(cli("suite", "run", str(path), "--results-dir", str(tmp_path / "r1"), "--address", cluster.address,
                 env={**cluster.env, "RAY_AUTH_TOKEN": "not-the-token"}, timeout=180), "token authentication")
    one_line(cli("suite", "run", str(path), "--results-dir", str(tmp_path / "r2"), "--address", cluster.address,
                 "--cpus-per-trial", "2", env=cluster.env, timeout=180), "no node of the Ray cluster")
    assert time.time() - t0 < 150
    proc = start_cli("suite", "run", str(path), "--results-dir", str(res), "--address", cluster.address,
                     "--max-concurrent", "2", env=cluster.env)
    try:
        lost = wait_for(lambda: [r for r in trials(uri) if r.info.status == "RUNNING" and r.data.metrics
                                 and r.data.tags.get("ray_node") == cluster.worker_node_id
                                 and (res / "checkpoints" / r.data.tags["binbench.attempt"] / "last.pt").exists()],
                        300, "a trial on the second node wrote a checkpoint", proc, poll=0.1)[0]
        cluster.remove_worker()  # the node dies with its trial
        out, err = proc.communicate(timeout=600)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, out[-2000:] + err[-2000:]
    assert_each_trial_finished_once(uri, keys)
    key = lost.data.tags["binbench.key"]
    runs_of_lost = [r for r in trials(uri) if r.data.tags["binbench.key"] == key]
    assert {r.info.status for r in runs_of_lost} == {"KILLED", "FINISHED"}
    done = next(r for r in runs_of_lost if r.info.status == "FINISHED")
    assert done.data.tags["ray_node"] != cluster.worker_node_id
    assert done.data.tags["continued_from_checkpoint"] == "true"  # Tune's retry continued, not restarted
    assert done.data.metrics["epochs_run"] == 40


# -- 5b: a real MLflow tracking server ----------------------------------------------------------------------
def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class MlflowServer:
    """``mlflow server`` on 127.0.0.1, SQLite backend and artifacts in a temporary folder; start/stop bounded."""

    def __init__(self, root: Path):
        self.root, self.port, self.proc = root, _free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        import shutil

        exe = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
        self.proc = subprocess.Popen(
            [exe, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}", "--serve-artifacts",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "a"), start_new_session=True,  # noqa: SIM115
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                pytest.fail("mlflow server exited: " + (self.root / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server not up within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow  # ~2 minutes on 2 cores
def test_suite_tracked_on_mlflow_server_and_reported(tmp_path, mlflow_server):
    body = {**SUITE, "grid": {**SUITE["grid"], "seeds": [0]}, "defaults": {"epochs": 2, "model_args": {"hidden": [32]}}}
    path = write_suite(tmp_path, body)
    res = tmp_path / "res"
    out = cli("suite", "run", str(path), "--results-dir", str(res), "--tracking-uri", mlflow_server.uri, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert not (res / "mlflow.db").exists()  # everything went to the server
    assert_each_trial_finished_once(mlflow_server.uri, {t.key for t in load_suite(str(path)).trials})
    rep = cli("report", str(path), "--tracking-uri", mlflow_server.uri, "--out", str(tmp_path / "rep"), timeout=300)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert f"report of faults: 2 trial runs counted (0 ignored) from {mlflow_server.uri}" in rep.stdout
    assert list((tmp_path / "rep").glob("*.md"))


@pytest.mark.slow  # ~3 minutes on 2 cores
def test_server_lost_mid_suite_no_hang_no_lost_work(tmp_path, mlflow_server):
    path = write_suite(tmp_path, SUITE)
    res = tmp_path / "res"
    uri = mlflow_server.uri
    keys = {t.key for t in load_suite(str(path)).trials}
    proc = start_cli("suite", "run", str(path), "--results-dir", str(res), "--tracking-uri", uri,
                     "--max-concurrent", "1")
    try:
        wait_for(lambda: any(r.info.status == "FINISHED" for r in trials(uri)), 300, "a trial finished", proc)
        wait_for(lambda: [r for r in trials(uri) if r.info.status == "RUNNING" and r.data.metrics], 120,
                 "the next trial logged an epoch", proc)
        finished_before = {r.info.run_id for r in trials(uri) if r.info.status == "FINISHED"}
        mlflow_server.stop()  # the tracking server dies mid-suite
        t0 = time.time()
        out, err = proc.communicate(timeout=300)  # no hang: trials fail in seconds, the driver ends
        took = time.time() - t0
    finally:
        stop_group(proc)
    assert proc.returncode == 2 and took < 90, (took, err[-2000:])  # the suite stops, no attempt burnt
    assert "no longer answers: stopping the suite" in out
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("binbench: error: MLflow tracking store") and "--resume" in last
    # what the trials trained is kept: the interrupted trial's checkpoint is on disk
    assert any((res / "checkpoints").glob("*/last.pt"))
    mlflow_server.start()  # the server returns, same store
    out = cli("suite", "run", str(path), "--results-dir", str(res), "--tracking-uri", uri, "--resume", timeout=500)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert_each_trial_finished_once(uri, keys)
    assert finished_before <= {r.info.run_id for r in trials(uri) if r.info.status == "FINISHED"}
    continued = [r for r in trials(uri) if r.info.status == "FINISHED" and r.info.run_id not in finished_before
                 and r.data.tags.get("continued_from_checkpoint") == "true"]
    assert continued, "the trial the server's loss interrupted continued from its checkpoint"
