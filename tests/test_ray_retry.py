"""A trial that crashes is retried (by Ray, or by the local executor in its own process) and continues from its
own last checkpoint, not from scratch (binbench no longer hands Ray a copy of every epoch's checkpoint)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
import yaml

from .conftest import REPO, cli_here

# longer than the default timeout (pyproject): a suite on Ray, a trial crashing and retried
# (a fixture's set-up counts against the first test that uses it)
pytestmark = pytest.mark.timeout(900)

CRASH_ONCE = '''
import os
from pathlib import Path

from bench import register_estimator
from estimators.ste import SteSign


@register_estimator("test_crash_once")
class CrashOnce(SteSign):
    """STE whose trial crashes once, as the second epoch starts."""

    reference = False  # STE stays the one reference estimator

    def set_progress(self, progress):
        super().set_progress(progress)
        log = Path(os.environ["CRASH_ONCE_LOG"])
        with log.open("a") as f:
            f.write(f"{progress.epoch}\\n")
        if progress.epoch == 1 and not (log.parent / "crashed").exists():
            (log.parent / "crashed").touch()
            raise RuntimeError("crash once")
'''


def _plugin_site(root):
    """An installed-looking package (dist-info with an entry point) without running pip."""
    root.mkdir()
    (root / "crash_once.py").write_text(CRASH_ONCE)
    info = root / "binbench_crash_once-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: binbench-crash-once\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[binbench.estimators]\ntest_crash_once = crash_once\n")
    return root


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_crashed_trial_continues_from_its_own_checkpoint(tmp_path, monkeypatch, executor):
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "retryme", "grid": {"estimators": ["test_crash_once"], "models": ["mlp"], "datasets": ["digits"],
                                    "seeds": [0], "bits": ["W1A32"]},
        "defaults": {"epochs": 3, "model_args": {"hidden": [16, 16]}}}))
    log = tmp_path / "epochs.log"
    args = ["suite", "run", str(suite), "--results-dir", str(tmp_path / "res"), "--executor", executor]
    if executor == "local":
        # the local executor runs a lone trial, and its retry, in the driver's process: this one, with the plugin's
        # module registered here (the driver's own start-up is not what is tested)
        from bench.estimator import ESTIMATORS

        monkeypatch.setenv("CRASH_ONCE_LOG", str(log))
        exec(compile(CRASH_ONCE, "crash_once.py", "exec"), {"__name__": "crash_once"})
        try:
            out = cli_here(*args)
        finally:
            ESTIMATORS.unregister("test_crash_once")
    else:  # Ray's workers are processes of their own: they find the plugin as an installed package
        site = _plugin_site(tmp_path / "site")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "CRASH_ONCE_LOG": str(log)}
        out = subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=REPO,
                             env=env, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    # epoch 0 trained once: the retry started at epoch 1 from the trial's last.pt; the export at the run's end sets
    # the estimator's final progress once more (epoch 2) on the network it rebuilds
    assert log.read_text().split() in (["0", "1", "1", "2"], ["0", "1", "1", "2", "2"])
    assert "trial 1/1 retry" in out.stdout
    con = sqlite3.connect(tmp_path / "res" / "mlflow.db")
    rows = con.execute("select status from runs r join tags t on t.run_uuid = r.run_uuid where t.key = "
                       "'binbench.kind' and t.value = 'trial' order by r.start_time").fetchall()
    assert [r[0] for r in rows] == ["FAILED", "FINISHED"]
    steps = con.execute("select m.step from metrics m join runs r on r.run_uuid = m.run_uuid where "
                        "r.status = 'FINISHED' and m.key = 'test_top1' order by m.step").fetchall()
    con.close()
    assert [s[0] for s in steps] == [0, 1, 2]  # the restored epoch is in the finished run too
