"""binbench benchmark: its rows are consistent, and it sees a slow estimator (timings themselves belong to the
benchmark's table, not to tests)."""

from __future__ import annotations

import time

import pytest

from bench import Estimator, register_estimator
from bench.benchmark import Workload, measure_estimators, run_benchmark, write
from bench.estimator import get_estimator_class, list_estimators, reference_estimator
from bench.functional import sign_ste


@register_estimator("test_sleepy")
class Sleepy(Estimator):
    """A straight-through sign that sleeps 20 ms per call: a known, large per-step cost."""

    kinds = ("weight",)

    def quantize(self, x, q):
        time.sleep(0.02)
        return sign_ste(x)


def test_estimator_rows_are_consistent(tmp_path):
    rows = run_benchmark(tmp_path, repeats=1, quick=True, only={"estimators"}, log=lambda *_: None)
    names = [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds and not n.startswith("test_")]
    ref = reference_estimator()
    for workload in {r["workload"] for r in rows if r["measure"] == "estimator step"}:
        est = {r["variant"].split(" / ")[0]: r for r in rows
               if r["measure"] == "estimator step" and r["workload"] == workload}
        assert sorted(est) == sorted(names)
        base = est[ref]["median"]
        for name, r in est.items():  # the ratio is the medians' ratio, held to the estimator's declared target
            assert r["ratio"] == pytest.approx(r["median"] / base)
            assert r["target"] == get_estimator_class(name).step_cost_target
            assert r["met"] == (r["ratio"] <= r["target"])
            label = get_estimator_class(name).setting_label({})
            assert not label or label.split(",")[0] in r["variant"]
    md = next(tmp_path.glob("benchmark-*.md")).read_text()
    table = [ln for ln in md.splitlines() if ln.startswith("| ") and "estimator step" in ln]
    assert len(table) == sum(r["measure"] == "estimator step" for r in rows)
    assert "machine:" in md and "torch" in md


def test_a_slow_estimator_misses_its_target_with_a_profile(tmp_path):
    rows: list[dict] = []
    w = Workload("mlp/digits", "mlp", "digits", "", 64, __import__("torch").device("cpu"), 1,
                 model_args={"hidden": [32, 32]})
    measure_estimators(w, 3, 1, rows, lambda *_: None, names=["test_sleepy"])
    sleepy = next(r for r in rows if r["variant"].startswith("test_sleepy"))
    # 3 steps x (binary layers) x 20 ms of sleep against a sub-millisecond step: far above any target
    assert sleepy["ratio"] > 3 and sleepy["met"] is False
    profile = next(r for r in rows if r["measure"] == "profile")
    assert profile["variant"].startswith("test_sleepy") and "total" in profile["profile"]
    write(rows, tmp_path, 1.0, 1, True)
    assert "Where the time goes" in next(tmp_path.glob("benchmark-*.md")).read_text()
