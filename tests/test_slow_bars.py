"""The issues' accuracy bars, on demand (`pytest -m slow`): 20 digits epochs per estimator on 2 CPU cores."""

from __future__ import annotations

import pytest

from bench.estimator import get_estimator_class, list_estimators
from bench.spec import resolve
from bench.train import train

WEIGHT_ESTIMATORS = [n for n in list_estimators() if "weight" in get_estimator_class(n).kinds
                     and not n.startswith("test_")]


@pytest.mark.slow
@pytest.mark.parametrize("name", WEIGHT_ESTIMATORS)
def test_20_digits_epochs_reach_85_percent_w1a1(name):
    # binbench run --estimator NAME --model mlp --dataset digits --epochs 20
    res = train(resolve({"estimator": name, "model": "mlp", "dataset": "digits", "epochs": 20, "seed": 0,
                         "threads": 2}))
    assert res.status == "finished" and res.top1 >= 85.0, f"{name}: {res.top1:.2f}%"
    if name == "vispa":
        assert set(res.eval_modes) == {"ensemble", "sample", "mean"}


@pytest.mark.slow
def test_ste_digits_bar_and_identical_reruns():
    # binbench run --estimator ste --model mlp --dataset digits --epochs 20 --seed 0: >= 90%, twice the same
    cfg = {"estimator": "ste", "model": "mlp", "dataset": "digits", "epochs": 20, "seed": 0, "threads": 2}
    a, b = train(resolve(cfg)), train(resolve(cfg))
    assert a.top1 >= 90.0
    assert [h["test_top1"] for h in a.history] == [h["test_top1"] for h in b.history]
