"""One tracked run for ``binbench run`` and suite trials: how a run ends is decided in one place."""

from __future__ import annotations

import pytest

from bench.spec import FP, RunIdentity, resolve
from bench.track import store
from bench.track.run import tracked_run

from .conftest import TINY


@pytest.fixture(scope="module")
def spec():
    return resolve({**TINY, "estimator": "ste", "epochs": 1})


@pytest.fixture
def uri(tmp_path):
    return store.sqlite_uri(tmp_path / "mlflow.db")


def _ended(uri: str, exc: BaseException, spec) -> tuple[str, dict[str, str]]:
    exp = store.prepare(uri, "t")
    with pytest.raises(type(exc)), tracked_run(uri, exp, RunIdentity.of(spec), spec, {}) as run:
        raise exc
    r = store.mlflow_client(uri).get_run(run.run_id)
    return r.info.status, r.data.tags


@pytest.mark.parametrize("exc, status, tag", [(KeyboardInterrupt(), "KILLED", "interrupted"),
                                              (SystemExit(0), "KILLED", "stopped"),
                                              (RuntimeError("broke"), "FAILED", "failed")])
def test_a_run_ends_as_what_ended_it(uri, spec, exc, status, tag):
    got, tags = _ended(uri, exc, spec)
    assert (got, tags[store.STATUS_TAG]) == (status, tag)
    assert ("RuntimeError: broke" == tags.get(store.ERROR_TAG)) == isinstance(exc, RuntimeError)
    assert tags[store.COMMIT_TAG] and "version.torch" in tags and "hardware.cpu" in tags  # the environment, once


def test_binbench_run_interrupted_is_what_a_suite_trial_interrupted_is(uri, monkeypatch, capsys):
    """A Ctrl-C in ``binbench run`` ends its run KILLED and tagged interrupted, as a suite trial's (it was
    tagged failed)."""
    import bench.train
    from bench.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.train, "train", interrupted)
    assert main(["run", "-e", "ste", "-m", "mlp", "-d", "digits", "--epochs", "1", "--tracking-uri", uri]) == 130
    client = store.mlflow_client(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("binbench-run").experiment_id])
    assert (run.info.status, run.data.tags[store.STATUS_TAG]) == ("KILLED", "interrupted")


def test_identity_names_fp_runs_and_labels_once():
    fp = resolve({**TINY, "estimator": "ste", "w_bits": 32, "a_bits": 32})
    ident = RunIdentity.of(fp, "s")
    assert ident.estimator == FP and ident.label == f"fp-mlp-digits-FP32-common-s{fp.config.seed}"
    assert ident.cell == "fp|mlp|digits|FP32|common"


def test_experiments_open_as_training_runs_and_no_empty_default(uri):
    """MLflow 3's UI picks an experiment's view from ``mlflow.experimentKind``; a store binbench made lists its
    own experiments only (MLflow's "Default" is deleted, and stays so when the store is opened again)."""
    from mlflow.entities import ViewType

    exp = store.prepare(uri, "t")
    client = store.mlflow_client(uri)
    assert client.get_experiment(exp).tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert [e.name for e in client.search_experiments()] == ["t"]
    old = client.create_experiment("older")  # a store made before the tag existed gets it when next prepared
    assert store.EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    store.prepare(uri, "older")
    assert store.mlflow_client(uri).get_experiment(old).tags[store.EXPERIMENT_KIND_TAG] == "custom_model_development"
    again = store.mlflow_client(uri)  # a fresh client opens the store again: MLflow re-creates a missing Default
    assert {e.name: e.lifecycle_stage for e in again.search_experiments(view_type=ViewType.ALL)}["Default"] == "deleted"
    assert sorted(e.name for e in again.search_experiments()) == ["older", "t"]


def test_default_experiment_with_runs_is_kept(uri):
    client = store.mlflow_client(uri)
    client.create_run("0")  # someone's run in the store's Default experiment: not binbench's to delete
    store.prepare(uri, "t")
    assert client.get_experiment("0").lifecycle_stage == "active"


def test_evaluate_reproduces_a_run_whose_scaling_resolved_from_native(tmp_path):
    """The recorded config holds ``scaling: internal`` (what ``native`` resolved to); evaluate resolves it again
    and reproduces the recorded top-1, also from a store moved to another folder with its artifacts; without
    them it says so (not "it diverged")."""
    import shutil

    from bench.errors import BinbenchError
    from bench.track.evaluate import evaluate_recorded, find_run
    from bench.track.run import single_run
    from bench.train import train

    spec = resolve({**TINY, "model_args": {"hidden": [16]}, "estimator": "irnet", "scaling": "native", "epochs": 2,
                    "threads": 1, "diagnostics": False})
    assert spec.config.scaling == "internal"
    made = tmp_path / "made"
    uri = store.sqlite_uri(made / "mlflow.db")
    with single_run(uri, spec) as run:
        res = train(spec, callbacks=[run.on_epoch], stage_hooks=[run.final_model])
        run.finish(res)
    assert evaluate_recorded(find_run(run.run_id, uri))["default"] == pytest.approx(res.top1, abs=1e-6)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(made, moved)
    shutil.rmtree(made)  # the recorded absolute artifact location is gone, as on another machine
    rec = find_run(run.run_id, store.sqlite_uri(moved / "mlflow.db"))
    assert rec.weights.is_relative_to(moved)
    assert evaluate_recorded(rec)["default"] == pytest.approx(res.top1, abs=1e-6)
    shutil.rmtree(moved / "artifacts")  # a store copied without its artifacts (the committed results/*/mlflow.db)
    with pytest.raises(BinbenchError) as exc:
        find_run(run.run_id, store.sqlite_uri(moved / "mlflow.db"))
    assert "its artifacts are not on this machine" in str(exc.value) and "\n" not in str(exc.value)
    assert "diverged" not in str(exc.value)
