"""Packed suite trials (bench.exec.plan + bench.exec.trial.run_pack) against the same trials run alone: the same
records in MLflow, a member that diverges ends alone and keeps its result, a pack that crashes is retried from its
members' checkpoints, and ``--pack`` chooses how trials pack."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.errors import BinbenchError
from bench.estimator import ESTIMATORS, Estimator, register_estimator
from bench.exec.driver import run_suite
from bench.exec.plan import PackMode, plan_packs
from bench.functional import sign_ste
from bench.suite import load_suite

EPOCHS = 3


@pytest.fixture
def plugins(tmp_path):
    """poison_ste writes a NaN into a weight after its first training step (it diverges in the pack's first epoch);
    flaky_ste raises once when epoch 1 starts (its pack crashes, the executor retries it)."""
    crashed = tmp_path / "crashed"

    @register_estimator("poison_ste")
    class PoisonSte(Estimator):
        kinds = ("weight",)
        has_constraint = True
        calls = 0

        def quantize(self, x, q):
            return sign_ste(x)

        def constrain_(self, w, q):
            self.calls += 1  # the first call projects the initial weights (before any step): left finite
            if self.calls > 1 and w.shape[0] == 32:
                w[0, 0] = float("nan")

    @register_estimator("flaky_ste")
    class FlakySte(Estimator):
        kinds = ("weight",)

        def quantize(self, x, q):
            return sign_ste(x)

        def set_progress(self, progress):
            super().set_progress(progress)
            if progress.epoch == 1 and not crashed.exists():
                crashed.write_text("once")
                raise RuntimeError("a crash in the middle of the pack")

    yield crashed
    for name in ("poison_ste", "flaky_ste"):
        ESTIMATORS.unregister(name)


@pytest.fixture
def monitor_runs(monkeypatch) -> list[str]:
    """The runs whose system metrics this process sampled (the in-process executor: max_concurrent=1)."""
    from bench.track import record

    started: list[str] = []
    real = record.start_system_metrics
    monkeypatch.setattr(record, "start_system_metrics", lambda run_id, uri: started.append(run_id) or real(run_id, uri))
    return started


def _suite(tmp_path: Path, estimators: list[str], name: str = "packs") -> Path:
    body = {"name": name, "grid": {"estimators": estimators, "models": ["mlp"], "datasets": ["digits"],
                                   "bits": ["W1A32"], "seeds": [0]},
            "defaults": {"epochs": EPOCHS, "model_args": {"hidden": [32, 32]}, "val_split": 0.1}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def _runs(out) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(out.tracking_uri)
    runs = client.search_runs([out.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("binbench.kind") == "trial"]


def _finished(runs) -> dict[str, object]:
    return {r.data.tags["binbench.key"]: r for r in runs if r.info.status == "FINISHED"}


def test_packed_members_record_what_solo_trials_record(tmp_path, monitor_runs):
    path = _suite(tmp_path, ["ste", "clipped_ste", "dsq"])
    suite = load_suite(str(path))
    assert [len(p.trials) for p in plan_packs(suite.trials, PackMode.parse("auto"), 1)] == [3]
    log: list[str] = []
    packed = run_suite(suite, tmp_path / "packed", executor="local", max_concurrent=1, log=log.append)
    monitored, monitor_runs[:] = list(monitor_runs), []
    solo = run_suite(suite, tmp_path / "solo", executor="local", max_concurrent=1, pack="off", log=log.append)
    assert len(monitor_runs) == 3 and len(monitored) == 1  # a pack is one process: one system-metrics monitor
    assert any("3 trial(s) in 1 pack(s)" in line for line in log)
    assert set(packed.statuses.values()) == {"finished"} and packed.statuses == solo.statuses
    a, b = _finished(_runs(packed)), _finished(_runs(solo))
    assert sorted(a) == sorted(b) == sorted(t.key for t in suite.trials)
    from mlflow.tracking import MlflowClient

    ca, cb = MlflowClient(packed.tracking_uri), MlflowClient(solo.tracking_uri)
    for key in a:
        ra, rb = a[key], b[key]
        assert ra.data.params == rb.data.params  # the same experiment, param for param
        # (MLflow's system metrics are sampled every few seconds: a short run may have none)
        assert {m for m in ra.data.metrics if not m.startswith("system/")} == \
            {m for m in rb.data.metrics if not m.startswith("system/")}
        # only the pack tags, and what differs between any two runs (ids, times, hosts), tell them apart
        assert ra.data.tags["binbench.pack_size"] == "3" and rb.data.tags["binbench.pack_size"] == "1"
        # and, on the members without a monitor, which member's run holds the pack's system metrics
        assert {k for k in ra.data.tags if not k.startswith("mlflow.")} - {"binbench.system_metrics_in"} == \
            {k for k in rb.data.tags if not k.startswith("mlflow.")}
        holder = ra.data.tags.get("binbench.system_metrics_in", key)
        assert a[holder].info.run_id == monitored[0]
        for metric in ("train_loss", "test_top1"):
            ha = [m.value for m in ca.get_metric_history(ra.info.run_id, metric)]
            hb = [m.value for m in cb.get_metric_history(rb.info.run_id, metric)]
            assert len(ha) == len(hb) == EPOCHS
        # float32: a packed member computes the solo run's numbers up to rounding (the float64 equality of every
        # step is tests/test_pack.py's): its first epoch's mean loss agrees closely
        first_a = ca.get_metric_history(ra.info.run_id, "train_loss")[0].value
        first_b = cb.get_metric_history(rb.info.run_id, "train_loss")[0].value
        assert first_a == pytest.approx(first_b, rel=1e-4)
        assert (tmp_path / "packed" / "checkpoints" / key / "final.pt").exists()
    # the benchmark's profile of a suite run takes a pack's span once, not once per member
    from bench.benchmark import suite_phases

    starts = [r.info.start_time / 1e3 for r in a.values()]
    ends = [r.info.end_time / 1e3 for r in a.values()]
    profile = suite_phases(tmp_path / "packed", min(starts) - 1, max(ends) + 1)
    assert "in 1 pack(s) of 3 trials" in profile
    summed = float(profile.split("spans summed ")[1].split(" s")[0])
    assert summed == pytest.approx(max(ends) - min(starts), abs=0.05)
    assert "in 3 pack(s) of 3 trials" in suite_phases(tmp_path / "solo", 0, 1e12)


def test_a_diverged_member_ends_alone_and_a_crashed_pack_continues_from_checkpoints(tmp_path, plugins):
    path = _suite(tmp_path, ["ste", "flaky_ste", "poison_ste"])
    suite = load_suite(str(path))
    keys = {t.estimator: t.key for t in suite.trials}
    out = run_suite(suite, tmp_path / "res", executor="local", max_concurrent=1, log=lambda m: None)
    assert plugins.exists(), "the pack crashed once"
    assert out.statuses == {keys["ste"]: "finished", keys["flaky_ste"]: "finished", keys["poison_ste"]: "diverged"}
    runs = _runs(out)
    by_key: dict[str, list] = {}
    for r in runs:
        by_key.setdefault(r.data.tags["binbench.key"], []).append(r)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    # the diverged member ended in the pack's first epoch and kept its one run through the crash and the retry
    (poisoned,) = by_key[keys["poison_ste"]]
    assert poisoned.data.tags["binbench.status"] == "diverged" and poisoned.info.status == "FAILED"
    for est in ("ste", "flaky_ste"):
        first, second = sorted(by_key[keys[est]], key=lambda r: r.info.start_time)
        assert first.info.status == "FAILED" and "a crash in the middle" in first.data.tags["error"]
        assert second.info.status == "FINISHED" and second.data.tags["continued_from_checkpoint"] == "true"
        assert second.data.tags["binbench.pack_size"] == "3"


def test_pack_switch(tmp_path):
    path = _suite(tmp_path, ["ste", "clipped_ste", "dsq", "recu", "reste"])
    trials = load_suite(str(path)).trials
    assert [len(p.trials) for p in plan_packs(trials, PackMode.parse("auto"), 1)] == [5]
    assert [len(p.trials) for p in plan_packs(trials, PackMode.parse("auto"), 2)] == [3, 2]
    assert [len(p.trials) for p in plan_packs(trials, PackMode.parse("off"), 1)] == [1] * 5
    assert [len(p.trials) for p in plan_packs(trials, PackMode.parse("2"), 1)] == [2, 2, 1]
    # memory: a budget for two members' estimate caps every pack at two
    from bench.exec.plan import MEMORY_SHARE, member_bytes

    two = int(2.5 * member_bytes(trials[0]) / MEMORY_SHARE)
    assert [len(p.trials) for p in plan_packs(trials, PackMode.parse("auto"), 1, memory=two)] == [2, 2, 1]
    for bad in ("0", "-1", "many", "1.5"):
        with pytest.raises(BinbenchError, match="--pack must be auto, off or a number"):
            PackMode.parse(bad)


def test_several_workers_start_the_costliest_packs_first(tmp_path):
    """With budgets a suite lists each trial's short runs first; two workers taking packs in that order would
    leave one worker training the longest pack alone at the end. Several workers take the costliest first (cost:
    members x epochs here, the network and data being the same), one worker the suite's order."""
    body = yaml.safe_load(_suite(tmp_path, ["ste", "dsq"]).read_text())
    body.update(budgets=[0.25, 0.5, 1], grid={**body["grid"], "bits": ["W1A1", "W1A32"], "seeds": [0, 1]},
                defaults={**body["defaults"], "epochs": 8})
    path = tmp_path / "budgets.yaml"
    path.write_text(yaml.safe_dump(body))
    trials = load_suite(str(path)).trials

    def shape(packs):
        return [(len(p.trials), p.trials[0].spec.config.epochs) for p in packs]

    one = shape(plan_packs(trials, PackMode.parse("auto"), 1))
    two = shape(plan_packs(trials, PackMode.parse("auto"), 2))
    assert sorted(one) == sorted(two) and len(two) == 6
    assert [e for _, e in one] == [2, 4, 8, 2, 4, 8]  # W1A1 then W1A32, each budget's pack in the suite's order
    assert [e for _, e in two] == [8, 8, 4, 4, 2, 2]
    solo = [t.spec.config.epochs for p in plan_packs(trials, PackMode.parse("off"), 2) for t in p.trials]
    assert solo == sorted(solo, reverse=True)
