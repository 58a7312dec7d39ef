"""Every config value is checked when the config is resolved, before Ray, MLflow or any data: one line each."""

from __future__ import annotations

import pytest
import yaml

from bench.cli import main

RUN = ["run", "-e", "ste", "-d", "digits", "--epochs", "1", "--set", "limit_train_batches=1"]  # a slip trains 1 batch
RUN_CASES = {
    "seed-negative": (["--set", "seed=-1"], "seed must be an integer in 0..2**32-1, got -1"),
    "seed-too-big": (["--set", "seed=4294967296"], "seed must be an integer in 0..2**32-1"),
    "seed-flag": (["--seed", "-3"], "seed must be an integer in 0..2**32-1"),
    "threads-0": (["--set", "threads=0"], "threads must be >= 1, got 0"),
    "device-gpu": (["--set", "device=gpu"], "device must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    "device-cuda-x": (["--set", "device=cuda:x"], "device must be auto, cpu, cuda, cuda:N or mps"),
    "eval-batch-0": (["--set", "eval_batch_size=0"], "eval_batch_size must be >= 1, got 0"),
    "lr-negative": (["--set", "lr=-0.1"], "lr must be > 0, got -0.1"),
    "lr-zero": (["--set", "lr=0"], "lr must be > 0, got 0"),
    "momentum-negative": (["--set", "momentum=-0.5"], "momentum must be in [0, 1), got -0.5"),
    "momentum-one": (["--set", "momentum=1"], "momentum must be in [0, 1)"),
    "weight-decay-negative": (["--set", "weight_decay=-1e-4"], "weight_decay must be >= 0"),
    "warmup-negative": (["--set", "warmup_epochs=-1"], "warmup_epochs must be >= 0, got -1"),
    "train-subset-0": (["--set", "train_subset=0"], "train_subset must be >= 1"),
    "train-subset-negative": (["--set", "train_subset=-5"], "train_subset must be >= 1"),
    "limit-batches-0": (["--set", "limit_train_batches=0"], "limit_train_batches must be >= 1"),
    "hidden-zero": (["--set", "model.hidden=[64,0]"], "model.hidden must be a non-empty list of positive integers"),
    "hidden-empty": (["--set", "model.hidden=[]"], "model.hidden must be a non-empty list of positive integers"),
    "hidden-float": (["--set", "model.hidden=[64.5]"], "model.hidden must be a non-empty list of positive integers"),
    "hidden-string": (["--set", "model.hidden=wide"], "model.hidden must be a non-empty list of positive integers"),
    "widths-negative": (["-m", "convnet", "--set", "model.widths=[-8,16]"], "model.widths must be a non-empty list"),
    "model-arg-unknown": (["--set", "model.hiden=[8]"], "unknown argument 'hiden' for model 'mlp'"),
    "model-act": (["--set", "model.act=tanh"], "model.act must be hardtanh, relu, prelu or identity"),
    "hparam-bool-for-float": (["-e", "biper", "--set", "estimator.w0=true"],
                              "hyperparameter 'w0' of estimator 'biper' must be a number"),
    "hparam-list-for-float": (["-e", "biper", "--set", "estimator.w0=[1,2]"],
                              "hyperparameter 'w0' of estimator 'biper' must be a number"),
    "hparam-string-for-float": (["-e", "biper", "--set", "estimator.w0=big"],
                                "hyperparameter 'w0' of estimator 'biper' must be a number"),
    "bits-empty": (["--bits", ""], "--bits must be W1A1, W1A32 or FP32, got ''"),
    "epochs-0": (["--epochs", "0"], "epochs must be >= 1"),
}

SUITE = {"name": "valid", "grid": {"estimators": ["ste"], "models": ["mlp"], "datasets": ["digits"], "seeds": [0]},
         "defaults": {"epochs": 1, "model_args": {"hidden": [16]}}}
SEARCH = {"metric": "test_top1", "mode": "max", "num_samples": 1}
SUITE_CASES = {
    "defaults-seedless-lr": ({"defaults": {**SUITE["defaults"], "lr": -1}}, [], "lr must be > 0"),
    "defaults-threads": ({"defaults": {**SUITE["defaults"], "threads": 0}}, [], "threads must be >= 1"),
    "defaults-hidden": ({"defaults": {"epochs": 1, "model_args": {"hidden": [0]}}}, [], "model.hidden must be"),
    "defaults-device": ({"defaults": {**SUITE["defaults"], "device": "tpu"}}, [], "device must be auto, cpu"),
    "grid-seed-negative": ({"grid": {**SUITE["grid"], "seeds": [-1]}}, [], "seed must be an integer in 0..2**32-1"),
    "override-hparam-type": ({"grid": {**SUITE["grid"], "estimators": ["biper"]}, "defaults": {
        **SUITE["defaults"], "epochs": 2}, "overrides": {"biper": {"estimator_hparams": {"w0": "fast"}}}}, [],
        "hyperparameter 'w0' of estimator 'biper' must be a number"),
    "data-root-missing": ({"defaults": {**SUITE["defaults"], "data_root": "/nonexistent/binbench-data"}}, [],
                          "data_root '/nonexistent/binbench-data' of trial"),
    "search-loguniform-zero": ({"search": {**SEARCH, "space": {"lr": {"loguniform": [0, 0.1]}}}}, [],
                               "search.space.lr.loguniform: bounds must be > 0"),
    "search-uniform-reversed": ({"search": {**SEARCH, "space": {"lr": {"uniform": [0.5, 0.1]}}}}, [],
                                "search.space.lr.uniform: low must be below high"),
    "search-uniform-arity": ({"search": {**SEARCH, "space": {"lr": {"uniform": [0.1]}}}}, [],
                             "search.space.lr.uniform needs [low, high]"),
    "search-choice-empty": ({"search": {**SEARCH, "space": {"optimizer": {"choice": []}}}}, [],
                            "search.space.optimizer.choice needs a non-empty list"),
    "search-choice-bad-value": ({"search": {**SEARCH, "space": {"momentum": {"choice": [0.9, 1.5]}}}}, [],
                                "search.space.momentum.choice: momentum must be in [0, 1)"),
    "search-randint-floats": ({"search": {**SEARCH, "space": {"warmup_epochs": {"randint": [0.5, 3]}}}}, [],
                              "randint needs two integers"),
    "search-grid-bad-type": ({"search": {**SEARCH, "space": {"optimizer": {"grid": ["sgd", "lamb"]}}}}, [],
                             "optimizer' must be one of sgd, adam"),
    "max-concurrent-0": ({}, ["--max-concurrent", "0"], "--max-concurrent must be an integer >= 1"),
    "max-concurrent-negative": ({}, ["--max-concurrent", "-2"], "--max-concurrent must be an integer >= 1"),
}


def _one_line_error(capsys, argv, needle):
    code = main(argv)
    out = capsys.readouterr()
    assert code == 2, out.out[-500:] + out.err
    assert needle in out.err, out.err
    assert "Traceback" not in out.err
    return out.err


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_rejects_bad_values_in_one_line(capsys, case):
    extra, needle = RUN_CASES[case]
    err = _one_line_error(capsys, [*RUN, *extra], needle)
    assert err.count("\n") == 1
    # the same value in a dry run: caught at resolution, nothing trained
    _one_line_error(capsys, [*RUN, *extra, "--dry-run"], needle)


@pytest.mark.parametrize("case", sorted(SUITE_CASES))
def test_suite_rejects_bad_values_before_anything_starts(tmp_path, capsys, case):
    body, argv, needle = SUITE_CASES[case]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump({**SUITE, **body}))
    res = tmp_path / "res"
    _one_line_error(capsys, ["suite", "run", str(path), "--results-dir", str(res), *argv], needle)
    import ray

    assert not ray.is_initialized()
    assert not res.exists(), "nothing created: no folder, no MLflow store"
