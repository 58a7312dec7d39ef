"""Suites: validation before anything starts, shipped suites, Ray execution, resume after SIGKILL, divergence."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.suite import SuiteError, list_suites, load_suite

from .conftest import REPO, cli_here

BROKEN = Path(__file__).parent / "suites_broken"
EXPECTED = {
    "unknown_keys.yaml": ["unknown key 'gird'", "did you mean: grid", "grid: unknown key 'seed'",
                          "did you mean: seeds"],
    "unknown_names.yaml": ["unknown estimator 'bipper'", "did you mean: biper", "unknown model 'resnet'",
                           "unknown dataset 'digit'", "unknown 'W2A2'; valid: W1A1, W1A32, FP32"],
    "wrong_types.yaml": ["grid.seeds must be a list of integers", "defaults.epochs", "must be an integer",
                         "unknown run-config key 'lrr'", "'fp_baseline' must be true or false"],
    "impossible.yaml": ["biper-mlp-digits-W1A1-common-s0", "trains in 2 stages", "cannot binarize activations"],
    "bad_search.yaml": ["search.mode must be max or min", "search.space.lr must be one of"],
    "not_yaml.yaml": ["not valid YAML at line"],
}


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, **kw)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_broken_suites_report_every_problem(name):
    with pytest.raises(SuiteError) as exc:
        load_suite(str(BROKEN / name))
    msg = str(exc.value)
    assert str(BROKEN / name) in msg
    for needle in EXPECTED[name]:
        assert needle in msg, f"{needle!r} missing from: {msg}"


EXECUTORS = ["local", "ray"]


@pytest.mark.parametrize("name", ["unknown_names.yaml", "impossible.yaml"])
def test_broken_suite_starts_nothing(tmp_path, name):
    # refused while the suite loads, before an executor is picked: one run covers both
    out = cli_here("suite", "run", str(BROKEN / name), "--results-dir", str(tmp_path / "res"), "--executor", "local")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "problem" in out.stderr.splitlines()[0]
    assert not (tmp_path / "res").exists()


def test_missing_data_stops_before_ray(tmp_path):
    out = cli_here("suite", "run", "mnist", "--data-root", str(tmp_path / "nothing"), "--results-dir",
                   str(tmp_path / "r"))
    assert out.returncode == 2 and "dataset 'mnist' not found in" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", list_suites())
def test_shipped_suites_load_with_unique_keys(name):
    suite = load_suite(name)
    assert suite.trials and len({t.key for t in suite.trials}) == len(suite.trials)


#: shipped suites whose ``suite show`` and ``suite run --dry-run`` take 50 s to 2 min on 2 cores (each command sizes
#: the packs and the cost of the whole suite by forwards of its models: ResNets on ImageNet, 189 and 630 trials): they
#: run under -m slow; the default run shows and dry-runs every other shipped suite, both branches of "needs:"
#: included (cifar10-cpu: CPU is enough; cifar10-w1a32: a GPU), and loads these three above
SLOW_TO_SHOW = {"cifar10-w1a1", "imagenet", "vispa-w1a32"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_SHOW else n
                                  for n in list_suites()])
def test_shipped_suites_show_and_dry_run(name, tmp_path, capsys):
    from bench.cli import main

    suite = load_suite(name)
    assert suite.trials and len({t.key for t in suite.trials}) == len(suite.trials)
    for args in (("suite", "show", name), ("suite", "run", name, "--dry-run", "--results-dir", str(tmp_path / "r"))):
        code = main(list(args))
        out = capsys.readouterr()
        assert code == 0, out.err
        assert f"{len(suite.trials)} trials" in out.out and "cost estimate" in out.out
    assert not (tmp_path / "r").exists()
    if name.endswith("-cpu"):  # sized for a CPU on purpose
        assert "needs: CPU is enough" in out.out
    elif name.startswith(("cifar", "imagenet", "vispa")):
        assert "needs: a GPU" in out.out


def test_smoke_covers_every_estimator():
    from bench import list_estimators
    from bench.estimator import get_estimator_class

    suite = load_suite("smoke")
    weight_estimators = {n for n in list_estimators() if "weight" in get_estimator_class(n).kinds
                         and not n.startswith("test_")}
    assert {t.estimator for t in suite.trials} == weight_estimators | {"fp"}


def test_trial_keys_stable_and_execution_independent():
    a = {t.label: t.key for t in load_suite("smoke").trials}
    b = {t.label: t.key for t in load_suite("smoke", data_root="/elsewhere").trials}
    assert a == b


def _write(tmp_path, body: dict) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(body))
    return p


def _runs(db: Path) -> list[tuple[str, str, str]]:
    """(grid trial key, status, binbench.status, run id, start) of the trial runs, read straight from the SQLite
    store (a search point's run has its own binbench.key; binbench.trial names its grid trial)."""
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "select r.run_uuid, r.status, r.start_time from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'binbench.kind' and t.value = 'trial'").fetchall()
        out = []
        for run_id, status, start in rows:
            tags = dict(con.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())
            out.append((tags.get("binbench.trial") or tags.get("binbench.key"), status, tags.get("binbench.status"),
                        run_id, start))
        return out
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def _group_alive(pgid: int) -> list[int]:
    """Processes of a process group still running (zombies, dead but not yet reaped, do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


# local: two worker processes (the driver's kill must take them along); ray: one trial at a time, as before
SIGKILL_CONCURRENCY = {"local": "2", "ray": "1"}


@pytest.mark.slow  # ~2 minutes per executor on 2 cores: a suite killed mid-run, then resumed
@pytest.mark.parametrize("executor", EXECUTORS)
def test_sigkill_then_resume_runs_each_trial_once(tmp_path, executor):
    body = {"name": "killme", "grid": {"estimators": ["ste", "clipped_ste", "approx_sign"], "models": ["mlp"],
                                       "datasets": ["digits"], "seeds": [0, 1]},
            "defaults": {"epochs": 12, "model_args": {"hidden": [128, 128]}}}
    path = _write(tmp_path, body)
    res = tmp_path / "res"
    db = res / "mlflow.db"
    args = [sys.executable, "-m", "bench.cli", "suite", "run", str(path), "--results-dir", str(res),
            "--max-concurrent", SIGKILL_CONCURRENCY[executor], "--executor", executor]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if sum(1 for r in _runs(db) if r[1] == "FINISHED") >= 1:
                break
            if proc.poll() is not None:
                pytest.fail("the suite ended before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished within 240 s")
        proc.send_signal(signal.SIGKILL)  # the driver, as a crash would
        proc.wait()
        if executor == "local" and sys.platform.startswith("linux"):  # its workers die with it, unaided
            deadline = time.time() + 20
            while _group_alive(proc.pid) and time.time() < deadline:
                time.sleep(0.2)
            assert not _group_alive(proc.pid), "a worker outlived the killed driver"
    finally:
        time.sleep(1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # what the driver left behind (Ray's processes)
        except ProcessLookupError:
            pass
    before = {r[3]: r for r in _runs(db) if r[1] == "FINISHED"}
    assert 1 <= len(before) < 6
    out = cli("suite", "run", str(path), "--results-dir", str(res), "--resume", "--executor", executor, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"{len(before)} of 6 trials already ended" in out.stdout
    after = _runs(db)
    finished = [r for r in after if r[1] == "FINISHED"]
    keys = {t.key for t in load_suite(str(path)).trials}
    assert sorted(r[0] for r in finished) == sorted(keys), "exactly one finished run per trial"
    for run_id, r in before.items():  # the ones done before the kill were not trained again
        assert any(a[3] == run_id and a[4] == r[4] for a in finished)
    assert not any(r[1] == "RUNNING" for r in after)


# on Ray under -m slow (~50 s on 2 cores, Ray's start-up): the default run has a suite end to end on Ray in
# test_ray_retry.py::test_crashed_trial_continues_from_its_own_checkpoint[ray], Tune's results of a pack ending each
# member with its own status (a diverged one included) in
# test_suite_record.py::test_tune_events_end_each_member_of_a_pack_with_its_own_result, and the record of a diverged
# trial (FAILED, binbench.status diverged), which the executor-neutral trial body writes, here with [local]
@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_diverging_trial_recorded_while_others_finish(tmp_path, executor):
    body = {"name": "diverge", "grid": {"estimators": ["ste", "clipped_ste"], "models": ["mlp"],
                                        "datasets": ["digits"], "seeds": [0]},
            "defaults": {"epochs": 2, "model_args": {"hidden": [64]}}, "overrides": {"ste": {"lr": 1e30}}}
    path = _write(tmp_path, body)
    # local: the driver in this process (the trials in its worker processes as always); Ray in a process of its own
    args = ("suite", "run", str(path), "--results-dir", str(tmp_path / "res"), "--executor", executor)
    out = cli_here(*args) if executor == "local" else cli(*args, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(diverged) in" in out.stdout and "(finished) in" in out.stdout  # the same progress lines for both
    runs = {r[0]: r for r in _runs(tmp_path / "res" / "mlflow.db")}
    by_est = {t.estimator: runs[t.key] for t in load_suite(str(path)).trials}
    assert by_est["ste"][1:3] == ("FAILED", "diverged")
    assert by_est["clipped_ste"][1:3] == ("FINISHED", "finished")


SEARCH = {"name": "searchme", "grid": {"estimators": ["ste", "reste"], "models": ["mlp"], "datasets": ["digits"],
                                       "seeds": [0]},
          "defaults": {"epochs": 4, "model_args": {"hidden": [64]}},
          "search": {"metric": "test_top1", "mode": "max", "num_samples": 2,
                     "space": {"lr": {"loguniform": [0.01, 0.5]}, "optimizer": {"grid": ["sgd", "adam"]}},
                     "asha": {"grace_period": 1, "reduction_factor": 2}}}


def _trial_runs(db: Path) -> list[dict]:
    """Each trial run's key, status, sampled point and test_top1 by epoch, from the SQLite store."""
    con = sqlite3.connect(db)
    try:
        out = []
        for key, run_id, status, stat in [(r[0], r[3], r[1], r[2]) for r in _runs(db)]:
            params = dict(con.execute("select key, value from params where run_uuid = ?", (run_id,)).fetchall())
            top1 = dict(con.execute("select step, value from metrics where run_uuid = ? and key = 'test_top1'",
                                    (run_id,)).fetchall())
            out.append({"key": key, "status": status, "binbench": stat, "point": (params["optimizer"],
                                                                                   params["lr"]), "top1": top1})
        return out
    finally:
        con.close()


@pytest.mark.parametrize("argv, needle", [
    (["--executor", "local"], "has a search: block (samplers, ASHA): it runs on Ray Tune only; use --executor ray"),
    (["--executor", "local", "--address", "127.0.0.1:1"], None)])
def test_local_executor_refuses_what_needs_ray(tmp_path, capsys, argv, needle):
    from bench.cli import main

    body = SEARCH if needle else {k: v for k, v in SEARCH.items() if k != "search"}
    code = main(["suite", "run", str(_write(tmp_path, body)), "--results-dir", str(tmp_path / "res"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert (needle or "--address joins a Ray cluster: use --executor ray with it") in err
    assert not (tmp_path / "res").exists()


@pytest.mark.slow  # ~75 s on 2 cores: a Ray search with ASHA (test_cell_asha_* check the scheduler fast)
def test_search_suite_asha_per_cell(tmp_path):
    path = _write(tmp_path, SEARCH)  # the default executor (auto) picks Ray for a search suite
    out = cli("suite", "run", str(path), "--results-dir", str(tmp_path / "res"), timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = _trial_runs(tmp_path / "res" / "mlflow.db")
    trials = load_suite(str(path)).trials
    assert {r["key"] for r in runs} == {t.key for t in trials}
    for t in trials:  # every cell: its own sampled points, its own full budget, its own survivor
        cell = [r for r in runs if r["key"] == t.key]
        assert len(cell) == 2 * 2, f"{t.label}: 2 samples x 2 optimizers"
        assert len({r["point"] for r in cell}) == 4, f"{t.label}: each run is its own point"
        assert sorted(r["point"][0] for r in cell) == ["adam", "adam", "sgd", "sgd"]
        assert {r["status"] for r in cell} <= {"FINISHED", "KILLED"}
        assert all(r["binbench"] == "stopped" for r in cell if r["status"] == "KILLED")
        assert any(r["status"] == "FINISHED" and len(r["top1"]) == 4 for r in cell), f"{t.label}: none ran to the end"
        # ASHA stops a run below the rung's cutoff among the runs recorded there: with cells apart those are runs
        # of the same cell, so some run of this cell scored higher at the epoch where this one was stopped
        for r in cell:
            if r["status"] == "KILLED":
                last = max(r["top1"])
                assert any(o is not r and o["top1"].get(last, -1.0) > r["top1"][last] for o in cell), \
                    f"{t.label}: a run stopped at epoch {last} although no run of its cell scored higher there"


class _Trial:
    """A Tune trial as CellASHA sees it: its id and its config's grid point (an index into the suite's trials)."""

    def __init__(self, trial_id: str, point: int):
        self.trial_id, self.config = trial_id, {"trial": point}


def test_cell_asha_decides_within_a_cell_only():
    """Results of two cells arrive interleaved, one cell scoring far above the other: each cell keeps its best
    point and stops its own weaker ones, where one ASHA over both cells would stop the weaker cell's every point."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

    from bench.exec.asha import CellASHA

    trials = {t.label: t for t in load_suite_body(SEARCH | {"grid": {**SEARCH["grid"], "seeds": [0, 1]}}).trials}
    ste0, ste1 = trials["ste-mlp-digits-W1A1-common-s0"], trials["ste-mlp-digits-W1A1-common-s1"]
    reste0 = trials["reste-mlp-digits-W1A1-common-s0"]
    assert ste0.cell == ste1.cell != reste0.cell  # a cell spans the seeds, not the estimators
    # (trial, cell, test_top1 at the first rung, the decision within the cell)
    seq = [("a1", ste0.cell, 90.0, "CONTINUE"), ("a2", ste1.cell, 80.0, "STOP"),
           ("b1", reste0.cell, 10.0, "CONTINUE"), ("b2", reste0.cell, 20.0, "CONTINUE"),
           ("b3", reste0.cell, 5.0, "STOP"), ("a3", ste0.cell, 95.0, "CONTINUE")]
    kw = {"metric": "test_top1", "mode": "max", "max_t": 5, "grace_period": 1, "reduction_factor": 2}
    points = list(trials.values())
    per_cell, pooled = CellASHA(points, **kw), AsyncHyperBandScheduler(**kw)
    got, got_pooled = [], []
    for sched, out in ((per_cell, got), (pooled, got_pooled)):
        objs = {tid: _Trial(tid, next(i for i, t in enumerate(points) if t.cell == cell)) for tid, cell, _, _ in seq}
        for t in objs.values():
            sched.on_trial_add(None, t)
        for tid, _, top1, _ in seq:
            out.append(sched.on_trial_result(None, objs[tid], {"training_iteration": 1, "test_top1": top1}))
    assert got == [getattr(TrialScheduler, want) for *_, want in seq]
    assert got_pooled[2:5] == [TrialScheduler.STOP] * 3  # the same results pooled: the low cell loses everything
    assert per_cell.debug_string() == "CellASHA over 2 cell(s)"


def test_cell_asha_never_stops_a_trial_at_its_last_epoch():
    """A rung at the last epoch (grace 1, factor 2, 4 epochs: rungs 1, 2, 4) would stop a run that already
    trained to the end, and record a finished run as stopped: the last epoch continues whatever it scores."""
    from ray.tune.schedulers import TrialScheduler

    from bench.exec.asha import CellASHA

    t = load_suite_body(SEARCH).trials[0]
    sched = CellASHA([t], metric="test_top1", mode="max", max_t=5, grace_period=1, reduction_factor=2)
    runs = {tid: _Trial(tid, 0) for tid in ("good", "bad")}
    for tr in runs.values():
        sched.on_trial_add(None, tr)
    out = {}
    for it in (1, 2, 3, 4):
        for tid, top1 in (("good", 90.0 + it), ("bad", 10.0)):
            out[(tid, it)] = sched.on_trial_result(None, runs[tid], {"training_iteration": it, "test_top1": top1})
    assert out[("bad", 1)] == TrialScheduler.STOP  # a rung before the end still stops the weaker point
    assert out[("bad", 4)] == TrialScheduler.CONTINUE and out[("good", 4)] == TrialScheduler.CONTINUE


def load_suite_body(body: dict):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return load_suite(str(_write(Path(d), body)))


def test_search_suite_hands_tune_one_scheduler_per_cell(tmp_path, monkeypatch):
    """What the runner gives Ray Tune: every grid point tagged with its cell, the space sampled for each of them,
    and CellASHA with the file's ASHA settings (max_t past the longest run)."""
    from ray import tune

    from bench.exec import ray_tune
    from bench.exec.asha import CellASHA
    from bench.exec.progress import SuiteLines
    from bench.exec.trial import Pack, SuiteContext, run_pack
    from bench.track.store import StoreWatch

    seen = {}

    class FakeTuner:
        def __init__(self, trainable, param_space, tune_config, run_config):
            seen.update(space=param_space, cfg=tune_config)

        def fit(self):
            return None

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    suite = load_suite(str(_write(tmp_path, SEARCH)))
    ctx = SuiteContext("sqlite:///x.db", "0", "parent", tmp_path, False, 1, 0.0)
    packs = [Pack((t,)) for t in suite.trials]  # a search suite's trials run alone
    ray_tune.run_on_ray(suite, packs, ctx, run_pack, SuiteLines(1, tty=False), StoreWatch("sqlite:///x.db"),
                        log=lambda m: None)
    points = [packs[i].trials[0] for i in seen["space"]["trial"]["grid_search"]]  # indices into the typed packs
    assert points == list(suite.trials) and len({p.cell for p in points}) == 2
    assert set(seen["space"]) >= {"lr", "optimizer"} and seen["cfg"].num_samples == 2
    sched = seen["cfg"].scheduler
    assert isinstance(sched, CellASHA)
    assert sched._kw | {"max_t": None} == {"metric": "test_top1", "mode": "max", "time_attr": "training_iteration",
                                           "max_t": None, "grace_period": 1, "reduction_factor": 2, "brackets": 1}
    assert sched._kw["max_t"] > SEARCH["defaults"]["epochs"]


# -- issue 15: what a suite file may hold, refused in one line before anything is expanded or started -------------
GOOD = "grid:\n  estimators: [ste]\n  models: [mlp]\n  datasets: [digits]\n  seeds: [0]\ndefaults: {epochs: 1}\n"
BOMB = "name: bomb\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '0'] * 9)}]\n" for i in range(10)) \
    + GOOD.replace("seeds: [0]", "seeds: *l9")
NESTED = "name: deep\n" + GOOD + "notes: " + "[" * 2000 + "]" * 2000 + "\n"
MALFORMED = {  # file body (str or bytes), what the one-line error says
    "dup_grid": ("name: dup1\ngrid: {estimators: [ste]}\n" + GOOD, "key 'grid' appears twice in one mapping"),
    "dup_seeds": ("name: dup2\n" + GOOD.replace("  seeds: [0]\n", "  seeds: [0]\n  seeds: [1, 2]\n"),
                  "key 'seeds' appears twice in one mapping (first at line 6)"),
    "alias_bomb": (BOMB, "alias bomb"),
    "alias_loop": ("name: loop\nnotes: &a [1, *a]\n" + GOOD, "refers to a node that contains it"),
    "deep_nesting": (NESTED, "nested deeper than 32 levels"),
    "not_utf8": (b"name: latin\ndescription: caf\xe9\n" + GOOD.encode(), "not UTF-8 text (byte 0xe9 at line 2)"),
    "control_char": ("name: ctl\ndescription: a\x00b\n" + GOOD, "not valid YAML"),
    "too_big": ("name: big\n" + GOOD + "notes: '" + "x" * (1 << 20) + "'\n", "a suite file is at most"),
    "name_dotdot": ("name: ../../x\n" + GOOD, "is not a valid suite name"),
    "name_abs": ("name: /abs/path\n" + GOOD, "is not a valid suite name"),
    "name_hidden": ("name: .hidden\n" + GOOD, "is not a valid suite name"),
    "name_list": ("name: [a, b]\n" + GOOD, "'name' must be a string"),
    "shipped_name": ("name: smoke\n" + GOOD, "is the name of the shipped suite"),
    "million_samples": ("name: many\n" + GOOD + "search: {num_samples: 1000000, space: {lr: {uniform: [0.1, 1]}}}\n",
                        "expands to 1,000,000 trials, more than the limit of 10,000"),
    "million_grid": ("name: grid\n" + GOOD.replace("seeds: [0]", "seeds: [" + ", ".join(map(str, range(2000)))
                                                   + "]").replace("[ste]", "all"),
                     "more than the limit of 10,000"),
}


def _suite_file(tmp_path, body, stem="suite") -> Path:
    p = tmp_path / f"{stem}.yaml"
    p.write_bytes(body if isinstance(body, bytes) else body.encode())
    return p


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_suite_is_one_line_before_anything_starts(tmp_path, capsys, case, executor):
    from bench.cli import main

    body, needle = MALFORMED[case]
    path = _suite_file(tmp_path, body)
    for action in (["show"], ["run", "--results-dir", str(tmp_path / "res"), "--executor", executor]):
        t0 = time.perf_counter()
        code = main(["suite", *action[:1], str(path), *action[1:]])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and err.count("\n") == 1, err[:500]
        assert time.perf_counter() - t0 < 20 and len(err) < 1000  # nothing expanded, nothing echoed back
    assert not (tmp_path / "res").exists() and not (tmp_path / "x").exists()


def test_malformed_suite_cli_has_no_traceback(tmp_path):
    out = cli("suite", "run", str(_suite_file(tmp_path, BOMB)), "--results-dir", str(tmp_path / "res"))
    assert out.returncode == 2 and "alias bomb" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and not (tmp_path / "res").exists()


def test_suite_file_named_like_shipped_suite_is_refused(tmp_path, capsys):
    from bench.cli import main

    path = _suite_file(tmp_path, GOOD, stem="smoke")  # no 'name': the stem names it
    assert main(["suite", "show", str(path)]) == 2
    assert "is the name of the shipped suite" in capsys.readouterr().err
    assert main(["report", str(path), "--results-dir", str(tmp_path)]) == 2
    assert "is the name of the shipped suite" in capsys.readouterr().err
    assert load_suite(str(REPO / "suites" / "smoke.yaml")).name == "smoke"  # the shipped file itself is fine


def test_max_trials_raises_the_bound(tmp_path, capsys):
    from bench.cli import main

    path = _suite_file(tmp_path, MALFORMED["million_samples"][0].replace("1000000", "20000"))
    assert main(["suite", "show", str(path)]) == 2
    assert "pass --max-trials 20000" in capsys.readouterr().err
    assert main(["suite", "show", str(path), "--max-trials", "20000"]) == 0
    assert main(["suite", "show", str(_suite_file(tmp_path, "name: two\n" + GOOD, "two")), "--max-trials", "0"]) == 2


def test_suite_path_that_is_a_folder(tmp_path, capsys, monkeypatch):
    from bench.cli import main

    (tmp_path / "mine").mkdir()
    assert main(["suite", "show", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a suite file" in err and err.count("\n") == 1
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()  # e.g. where `--results-dir smoke` put a run: the shipped name still wins
    assert main(["suite", "show", "smoke"]) == 0
    assert "suite smoke" in capsys.readouterr().out
    assert main(["report", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "no MLflow store at" in err and err.count("\n") == 1


def test_derived_paths_stay_inside_their_root(tmp_path, capsys):
    from bench.cli import main
    from bench.errors import BinbenchError
    from bench.suite import inside

    assert inside(tmp_path, "a-b.c") == tmp_path.resolve() / "a-b.c"
    for bad in ("../x", "/abs", "a/../../x"):
        with pytest.raises(BinbenchError, match="leads outside"):
            inside(tmp_path, bad)
    assert main(["report", "../../x"]) == 2
    assert main(["ui", "../../x"]) == 2
    assert "leads outside" in capsys.readouterr().err
