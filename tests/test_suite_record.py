"""A tiny suite run once through the CLI's ``main`` (in this process): its live progress lines and what it leaves
in MLflow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.exec.progress import SuiteLines
from bench.exec.ray_tune import TuneEvents
from bench.progress import format_duration
from bench.suite import count_trials, search_points
from bench.track.record import SYSTEM_METRICS_INTERVAL_S

from .conftest import cli_here

# longer than the default timeout (pyproject): its module fixture runs a suite
# (a fixture's set-up counts against the first test that uses it)
pytestmark = pytest.mark.timeout(900)

BODY = {"name": "recordme", "grid": {"estimators": ["ste", "clipped_ste"], "models": ["mlp"], "datasets": ["digits"],
                                    "seeds": [0]},
        "defaults": {"epochs": 1, "model_args": {"hidden": [16, 16]}}}


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory) -> tuple[object, Path, Path]:
    tmp = tmp_path_factory.mktemp("suite")
    path = tmp / "suite.yaml"
    path.write_text(yaml.safe_dump(BODY))
    # its two trials as one pack in this process: what a trial records is the trial body's, wherever it runs (the
    # worker processes run a suite end to end in test_suites.py::test_diverging_trial_recorded_while_others_finish,
    # a fresh CLI process in test_ray_retry.py)
    out = cli_here("suite", "run", str(path), "--results-dir", str(tmp / "res"), "--max-concurrent", "1")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out, path, tmp / "res"


def test_progress_lines_per_trial(suite_run):
    out, path, _ = suite_run
    from bench.suite import load_suite

    labels = {t.label: t.key for t in load_suite(str(path)).trials}
    starts = re.findall(r"^trial (\d)/2 start (\S+) \((\w+)\)$", out.stdout, re.M)
    ends = re.findall(r"^trial (\d)/2 end (\S+) \((\w+)\) top-1 (\d+\.\d\d) \(finished\) in [\d.]+ s", out.stdout,
                      re.M)
    assert sorted(s[0] for s in starts) == ["1", "2"] and sorted(e[0] for e in ends) == ["1", "2"]
    assert {(s[1], s[2]) for s in starts} == set(labels.items()) == {(e[1], e[2]) for e in ends}
    assert {s[0]: s[1] for s in starts} == {e[0]: e[1] for e in ends}  # an end line carries its start's number
    # Ray's banners and tables stay off the console
    assert "Configuration for experiment" not in out.stdout and "View detailed results" not in out.stdout
    assert "Token authentication" not in out.stderr


def test_expected_trials_and_durations():
    search = {"num_samples": 2, "space": {"lr": {"loguniform": [0.01, 0.1]}, "optimizer": {"grid": ["sgd", "adam"]}}}
    assert search_points(None) == 1 and search_points(search) == 4
    assert count_trials(1, 1, 3, ["W1A1"], 1, 1, False, search) == 12  # the file's count, before expansion
    assert [format_duration(s) for s in (12.34, 600, 7200)] == ["12.3 s", "10.0 min", "2.0 h"]


def test_progress_survives_pickling():
    import pickle

    cb = TuneEvents(SuiteLines(2, tty=False), [])
    assert pickle.loads(pickle.dumps(cb)).events.total == 2  # Tune keeps its callbacks in the experiment state


def _client_and_runs(res: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{res / 'mlflow.db'}")
    exp = client.get_experiment_by_name("recordme")
    runs = client.search_runs([exp.experiment_id])
    kinds = {k: [r for r in runs if r.data.tags.get("binbench.kind") == k] for k in ("suite", "trial")}
    return client, exp, kinds


PSUTIL_IN_TRIALS = subprocess.run([sys.executable, "-c", "import psutil"], capture_output=True).returncode == 0


def test_mlflow_holds_the_complete_record(suite_run):
    _, path, res = suite_run
    client, exp, kinds = _client_and_runs(res)
    assert exp.artifact_location == (res / "artifacts").resolve().as_uri()
    (parent,) = kinds["suite"]
    assert parent.data.tags["mlflow.source.name"] == "binbench"
    # the suite file, nothing else (a report writes nothing into the store)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {path.name}
    assert len(kinds["trial"]) == 2
    for r in kinds["trial"]:
        run_id = r.info.run_id
        # export/: the network as packed bits and as ONNX, which every run with binary weights writes at its end
        assert {a.path for a in client.list_artifacts(run_id)} == {"config.json", "model", "latent_hist.json",
                                                                   "export"}
        assert {a.path for a in client.list_artifacts(run_id, "export")} == {"export/model.bnn.safetensors",
                                                                           "export/model.onnx"}
        assert r.data.metrics["export/mismatches"] == 0 and r.data.metrics["export/top1"] == r.data.metrics["top1"]
        hist = json.loads(Path(client.download_artifacts(run_id, "latent_hist.json")).read_text())
        assert set(hist["epochs"]) == {"0", "1"} and len(hist["edges"]) == len(hist["epochs"]["1"]) + 1
        assert sum(hist["epochs"]["0"]) == sum(hist["epochs"]["1"]) == 16 * 16  # the one binary layer's weights
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/weights.pt"]
        config = json.loads(Path(client.download_artifacts(run_id, "config.json")).read_text())
        assert config["estimator"] == r.data.tags["estimator"] and config["model_args"]["hidden"] == [16, 16]
        (ds,) = r.inputs.dataset_inputs
        assert ds.dataset.name == "digits" and len(ds.dataset.digest) >= 8
        assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "training"
        assert not {"resume", "checkpoint_dir", "threads", "device", "data_root"} & set(r.data.params)
        assert r.data.tags["exec.threads"] == "1" and r.data.tags["exec.device"] == "cpu"
        assert r.data.tags["mlflow.source.name"] == "binbench" and r.data.tags["mlflow.source.type"] == "LOCAL"
        # MLflow's system metrics while it trained, where the trial can import psutil (optional; asked of a fresh
        # interpreter, as Ray puts a copy of its own on this process's path); sampled every 5 s, so only a longer
        # run has one
        if (PSUTIL_IN_TRIALS and (r.info.end_time - r.info.start_time) / 1000 > 2 * SYSTEM_METRICS_INTERVAL_S):
            assert "system/cpu_utilization_percentage" in r.data.metrics
        # per-layer diagnostics by layer path: the MLP's second linear is its one binary layer here
        assert {k for k in r.data.metrics if k.count("/") == 2} == {
            f"diag/linear2/{m}" for m in ("qe", "laplace_b", "flip", "saturation")}


def test_parent_run_holds_its_counts_and_the_store_opens_as_training_runs(suite_run):
    """The execution's counts are the parent run's params (planned) and metrics (outcome), not only tags; MLflow's
    UI shows the experiment as training runs, and the store has no empty "Default" experiment."""
    _, _, res = suite_run
    client, exp, kinds = _client_and_runs(res)
    (parent,) = kinds["suite"]
    assert {k: parent.data.params[k] for k in ("trials", "submitted")} == {"trials": "2", "submitted": "2"}
    assert {k: parent.data.metrics[k] for k in ("finished", "diverged", "failed", "unfinished")} == {
        "finished": 2.0, "diverged": 0.0, "failed": 0.0, "unfinished": 0.0}
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert [e.name for e in client.search_experiments()] == ["recordme"]


def test_report_reads_the_store_and_writes_nothing_into_it(suite_run):
    """`binbench report` leaves the store it reads as it was (a committed reference store stays unchanged); its
    own files say which store, in which state, and which executions it read."""
    import hashlib

    _, path, res = suite_run
    before = hashlib.sha256((res / "mlflow.db").read_bytes()).hexdigest()
    out = cli_here("report", str(path), "--results-dir", str(res))
    assert out.returncode == 0, out.stderr[-2000:]
    assert hashlib.sha256((res / "mlflow.db").read_bytes()).hexdigest() == before
    client, _, kinds = _client_and_runs(res)
    (parent,) = kinds["suite"]
    assert "report" not in {a.path for a in client.list_artifacts(parent.info.run_id)}
    md = (res / "leaderboard.md").read_text()
    assert f"sha256:{before[:16]} of the file as this report read it" in md
    # how the execution ran and the wall time it took: the parent run's span, in the header and the LaTeX caption
    wall = round((parent.info.end_time - parent.info.start_time) / 1e3)
    took = f"{wall // 60} min {wall % 60:02d} s" if wall >= 60 else f"{wall} s"
    assert (f"suite executions in the store (MLflow parent runs, oldest first): {parent.info.run_id} (local "
            f"executor, 1 worker(s) of 1 CPU, 2 trial(s) trained in 1 pack(s), {took} wall)") in md
    assert f"- wall time measured: {took} (the suite executions listed below" in md
    assert f"Trained in {took} of wall time" in (res / "leaderboard.tex").read_text()


def test_evaluate_reproduces_a_suite_trial(suite_run):
    _, _, res = suite_run
    _, _, kinds = _client_and_runs(res)
    r = kinds["trial"][0]
    out = cli_here("evaluate", r.info.run_id, "--tracking-uri", f"sqlite:///{res / 'mlflow.db'}", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["logged_top1"] == pytest.approx(r.data.metrics["top1"])
    assert got["top1"] == pytest.approx(r.data.metrics["top1"], abs=1e-6)


def test_binbench_run_records_and_evaluate_reproduces(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    out = cli_here("run", "-e", "ste", "-d", "digits", "--epochs", "1", "--set", "model.hidden=[16,16]", "--set",
                   "threads=1", "--tracking-uri", uri)
    assert out.returncode == 0, out.stderr[-2000:]
    run_id = re.search(r"recorded as MLflow run (\w+) in ", out.stdout).group(1)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "lr" in run.data.params and "resume" not in run.data.params
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0]  # per-epoch metrics
    assert run.data.metrics["best_epoch"] == 1  # counted from 1, as the console prints it
    assert run.data.metrics["top1"] == pytest.approx(float(re.search(r"final top1 ([\d.]+)", out.stdout).group(1)),
                                                     abs=0.006)
    folder = tmp_path / "store" / "artifacts" / run_id / "artifacts"  # the artifacts beside the store
    assert (folder / "config.json").is_file() and (folder / "model" / "weights.pt").is_file()
    ev = cli_here("evaluate", str(folder))
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert f"test top-1 {run.data.metrics['top1']:.2f}" in ev.stdout
    assert cli_here("run", "-e", "ste", "--no-track", "--dry-run").returncode == 0


def test_evaluate_unknown_run_is_one_line(tmp_path):
    out = cli_here("evaluate", "0123abcd", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "no run or folder '0123abcd'" in out.stderr


def test_progress_tells_stopped_from_finished(capsys):
    from types import SimpleNamespace

    from bench.exec.trial import Pack

    points = [Pack((SimpleNamespace(label=f"l{i}", key=f"k{i}"),)) for i in range(4)]
    cb = TuneEvents(SuiteLines(3, tty=False), points, epochs={"k1": 4, "k2": 4, "k3": 4})
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"trial": i},
                              last_result=r)
              for i, r in enumerate([{"test_top1": 80.0, "training_iteration": 4, "done": True},
                                     {"test_top1": 50.0, "training_iteration": 2, "done": True},
                                     {"diverged": True, "training_iteration": 1, "done": True}], start=1)]
    for t in trials:
        cb.on_trial_start(0, trials, t)
    for t in trials:
        cb.on_trial_complete(0, trials, t)
    ends = [ln for ln in capsys.readouterr().out.splitlines() if " end " in ln]
    assert [re.search(r"\((\w+)\) in", ln).group(1) for ln in ends] == ["finished", "stopped", "diverged"]
    assert "top-1 80.00" in ends[0] and "top-1 -" in ends[2] and "1/3 done" in ends[0] and "left" in ends[0]


def test_unwritable_artifact_location_is_a_tag_not_a_failed_trial(tmp_path):
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from bench.track.record import log_run_record

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # an artifact location below a file: every write fails, as with a vanished folder
    exp = client.create_experiment("old", artifact_location=str(blocker / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    res = SimpleNamespace(data_source="digits", data_digest="sha256:ab", status="finished")
    log_run_record(client, run_id, {"dataset": "digits"}, res, {"w": 1})
    assert "record_error" in client.get_run(run_id).data.tags


def test_progress_bar_on_a_terminal(capsys):
    pytest.importorskip("tqdm")
    from types import SimpleNamespace

    from bench.exec.trial import Pack

    cb = TuneEvents(SuiteLines(2, tty=True), [Pack((SimpleNamespace(label="l1", key="k1"),))])
    trial = SimpleNamespace(trial_id="t1", config={"trial": 0},
                            last_result={"test_top1": 80.0, "training_iteration": 1})
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_complete(0, [trial], trial)
    cb.on_experiment_end([trial])
    out = capsys.readouterr().out
    assert "trial 1/2 end l1 (k1) top-1 80.00 (finished)" in out and "left" not in out  # the bar has the ETA
    assert re.search(r"suite: +50%.*1/2 \[", out)


def test_copied_store_writes_no_artifacts_outside_its_folder(tmp_path):
    """A store made on another machine keeps its absolute artifact location: nothing is created there."""
    from mlflow.tracking import MlflowClient

    from bench.track.record import log_suite_file

    elsewhere = tmp_path / "gone" / "results" / "artifacts"  # its parent folder does not exist here
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("copied", artifact_location=elsewhere.as_uri())
    run = client.create_run(exp)
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text("name: copied\n")
    log_suite_file(client, run.info.run_id, suite_file)
    assert not (tmp_path / "gone").exists()
    assert "does not exist here" in client.get_run(run.info.run_id).data.tags["record_error"]


def test_tune_events_end_each_member_of_a_pack_with_its_own_result(capsys):
    """On Ray a pack is one Tune trial whose results carry the member's index: each member ends with its own."""
    from types import SimpleNamespace

    from bench.exec.trial import Pack

    pack = Pack(tuple(SimpleNamespace(label=f"l{i}", key=f"k{i}", model="mlp", dataset="digits") for i in range(2)))
    cb = TuneEvents(SuiteLines(2, tty=False), [pack])
    trial = SimpleNamespace(trial_id="t1", config={"trial": 0}, last_result={})
    cb.on_trial_start(0, [trial], trial)
    cb.on_trial_result(0, [trial], trial, {"member": 0, "test_top1": 61.0})
    cb.on_trial_result(0, [trial], trial, {"member": 1, "diverged": True, "train_loss": float("nan")})
    trial.last_result = {"member": 1, "diverged": True}
    cb.on_trial_complete(0, [trial], trial)
    ends = dict(re.findall(r"end (l\d) \(k\d\) (top-1 \S+ \(\w+\))", capsys.readouterr().out))
    assert ends == {"l0": "top-1 61.00 (finished)", "l1": "top-1 - (diverged)"}
