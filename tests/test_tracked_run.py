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
