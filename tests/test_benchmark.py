"""binbench benchmark runs and writes its table (numbers are not asserted: timings belong to benchmarks)."""

from __future__ import annotations

from bench.benchmark import run_benchmark
from bench.estimator import get_estimator_class, list_estimators


def test_benchmark_quick_writes_table(tmp_path):
    rows = run_benchmark(tmp_path, repeats=1, quick=True, only={"estimators"}, log=lambda *_: None)
    names = [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds and not n.startswith("test_")]
    est_rows = [r for r in rows if r["measure"] == "estimator step"]
    assert len(est_rows) == 2 * len(names)  # on the MLP and on resnet20
    assert all(r["ratio"] > 0 for r in est_rows)
    md = next(tmp_path.glob("benchmark-*.md")).read_text()
    assert "machine:" in md and "torch" in md and "vispa / ste (K = 4" in md
