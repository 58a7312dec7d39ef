"""binbench benchmark: its rows compare each estimator with the reference, and it sees a slow estimator. The
steps are timed by a clock of the test's own, so nothing here depends on how busy the machine is (timings
themselves belong to the benchmark's table, not to tests)."""

from __future__ import annotations

import pytest

from bench import Estimator, register_estimator
from bench.benchmark import Workload, measure_estimators, write
from bench.estimator import get_estimator_class, list_estimators, reference_estimator
from bench.functional import sign_ste


class FakeClock:
    """A clock that advances 1 ms at every reading and by whatever an estimator spends (``spend``): step times
    that are known in advance, whatever else the machine is doing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-3
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


CLOCK = FakeClock()


@register_estimator("test_sleepy")
class Sleepy(Estimator):
    """A straight-through sign that costs 1 s of the test's clock per call: a known, large per-step cost."""

    kinds = ("weight",)

    def quantize(self, x, q):
        CLOCK.spend(1.0)
        return sign_ste(x)


def _workload() -> Workload:
    return Workload("mlp/digits", "mlp", "digits", "", 64, __import__("torch").device("cpu"), 1,
                    model_args={"hidden": [32, 32]})


def test_estimator_rows_hold_every_estimator_to_its_target(tmp_path):
    """With a clock that gives every step the same time, every estimator's ratio is 1 and meets its declared
    target, and nothing is profiled: the rows compare each estimator with the reference on the same clock."""
    rows: list[dict] = []
    names = [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds and not n.startswith("test_")]
    measure_estimators(_workload(), 2, 2, rows, lambda *_: None, clock=FakeClock())
    est = {r["variant"].split(" / ")[0]: r for r in rows if r["measure"] == "estimator step"}
    assert sorted(est) == sorted(names)
    assert all(f" / {reference_estimator()}" in r["variant"] for r in est.values())
    assert {n: (r["ratio"], r["met"]) for n, r in est.items()} == {n: (pytest.approx(1.0), True) for n in names}
    assert {n: r["target"] for n, r in est.items()} == {n: get_estimator_class(n).step_cost_target for n in names}
    assert not [r for r in rows if r["measure"] == "profile"]
    write(rows, tmp_path, 1.0, 1, True)
    md = next(tmp_path.glob("benchmark-*.md")).read_text()
    assert len([ln for ln in md.splitlines() if ln.startswith("| ") and "estimator step" in ln]) == len(names)
    assert "machine:" in md and "torch" in md


def test_a_slow_estimator_misses_its_target_with_a_profile(tmp_path):
    """The mechanism, not a race: an estimator whose steps cost far more on the clock misses its target, and the
    row that misses gets a profile (and the table a "where the time goes" section)."""
    rows: list[dict] = []
    measure_estimators(_workload(), 3, 1, rows, lambda *_: None, names=["test_sleepy"], clock=CLOCK)
    sleepy = next(r for r in rows if r["variant"].startswith("test_sleepy"))
    # 3 steps x (binary layers) x 1 s of the clock against a few ms of readings: far above any target
    assert sleepy["ratio"] > 100 and sleepy["met"] is False
    profile = next(r for r in rows if r["measure"] == "profile")
    assert profile["variant"].startswith("test_sleepy") and "total" in profile["profile"]
    write(rows, tmp_path, 1.0, 1, True)
    assert "Where the time goes" in next(tmp_path.glob("benchmark-*.md")).read_text()


def test_ensemble_rows_hold_each_ensemble_estimator_to_the_issue_target(tmp_path):
    """Each estimator that evaluates an ensemble of sampled networks gets a row: its epoch (training and every
    evaluation mode) over the reference estimator's, held to 3.5x (issue 23; quick: on the embedded digits)."""
    from bench.benchmark import ENSEMBLE_TARGET, measure_ensembles

    ensembles = [n for n in list_estimators() if not n.startswith("test_")
                 and get_estimator_class(n).eval_cost({}) > len(get_estimator_class(n).eval_modes)]
    assert ensembles  # a built-in one evaluates an ensemble
    rows: list[dict] = []
    measure_ensembles("", __import__("torch").device("cpu"), True, rows, lambda *_: None)
    ref = next(r for r in rows if "ratio" not in r)
    assert ref["variant"].startswith(reference_estimator()) and ref["median"] > 0
    ratios = {r["variant"].split(" ")[0]: r for r in rows if "ratio" in r}
    assert sorted(ratios) == sorted(ensembles)
    for r in ratios.values():
        assert r["target"] == ENSEMBLE_TARGET and r["ratio"] == pytest.approx(r["median"] / ref["median"])
        assert r["met"] == (r["ratio"] <= ENSEMBLE_TARGET)
        # (no 'ratio > 1' here: on the quick 8x8 digits an epoch is a fraction of a second, and on a loaded machine
        # the two epochs' times cross; the full-size row in results/perf says how far apart they are)


def test_the_table_names_no_machine_path_in_its_command(tmp_path, monkeypatch):
    """The first table made with --data-root wrote the machine's data folder into its header: a committed table
    names the folder's last part only (as reports do), and the output folder relative to itself."""
    out, data = tmp_path / "perf", tmp_path / "elsewhere" / "data"
    monkeypatch.setattr("sys.argv", ["binbench", "benchmark", "--out", str(out), "--data-root", str(data)])
    write([], out, 1.0, 1, False)
    md = next(out.glob("benchmark-*.md")).read_text()
    made = next(ln for ln in md.splitlines() if ln.startswith("- made by:"))
    assert str(tmp_path) not in md and "--data-root .../data" in made and "--out ." in made
