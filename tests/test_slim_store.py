"""scripts/slim_store.py: a committed store loses MLflow's system metrics and nothing else."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_slim_store_drops_system_metrics_only(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("slim")
    run = client.create_run(exp).info.run_id
    client.log_param(run, "lr", "0.01")
    client.set_tag(run, "estimator", "ste")
    for step in range(3):
        client.log_metric(run, "test_top1", 50.0 + step, step=step)
        client.log_metric(run, "system/cpu_utilization_percentage", 99.0, step=step)
    client.set_terminated(run)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "slim_store.py"), str(tmp_path / "mlflow.db")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "3 system-metric rows removed" in out.stdout
    got = MlflowClient(uri).get_run(run)
    assert set(got.data.metrics) == {"test_top1"} and got.data.params == {"lr": "0.01"}
    assert got.data.tags["estimator"] == "ste"
    assert [m.value for m in MlflowClient(uri).get_metric_history(run, "test_top1")] == [50.0, 51.0, 52.0]
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "slim_store.py"), str(tmp_path / "none.db")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a file" in bad.stderr and "Traceback" not in bad.stderr
