"""scripts/gpu-burst.sh --dry-run: the GPU burst's whole path on a CPU at tiny sizes, without MLflow or Ray."""

from __future__ import annotations

import os
import subprocess

import pytest

from .conftest import REPO


@pytest.mark.slow  # ~75 s on 2 busy cores; the pack it trains is tests/test_pack*.py's in the default run
def test_dry_run_writes_the_table_within_two_minutes(tmp_path):
    out = tmp_path / "burst"
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu-burst.sh"), "--out", str(out), "--dry-run"],
                         capture_output=True, text=True, timeout=300, env={**os.environ})
    assert res.returncode == 0, res.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    assert files == {"burst.log", "curves.png", "measurements.md", "runs.jsonl", "table.md"}  # <= 8 files
    table = (out / "table.md").read_text()
    assert "DRY RUN" in table and "| ste | 1/32 |" in table and "made by: scripts/gpu-burst.sh" in table
    assert len((out / "runs.jsonl").read_text().splitlines()) == table.count("| 1/32 |")
    assert "packed vs solo" in (out / "measurements.md").read_text()
    assert not list(tmp_path.glob(".*")), "nothing written beside the output folder"


def test_without_a_gpu_it_refuses_in_one_line(tmp_path):
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu-burst.sh"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    if res.returncode == 0:
        pytest.skip("a CUDA device is here")
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
