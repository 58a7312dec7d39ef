"""Nothing non-finite is silently binarized (issue 21): a NaN/inf weight or binarized input ends the run
``diverged`` with one line naming the layer where it appeared, and ``binbench run`` exits 3.

A binarizer maps NaN to +1 and inf to +-1, so before the check such runs finished with a finite loss: a NaN
weight simply read as +1 for the rest of training, and one inf input made DSQ's range NaN while its forward
stayed finite.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.cli import main
from bench.estimator import ESTIMATORS, Estimator, register_estimator
from bench.functional import sign_ste
from bench.models import MODELS, register_model
from bench.spec import resolve
from bench.train import train

from .conftest import TINY

#: hidden widths 64, 48, 32 with binary first/last: linear1 (64 in), linear2, linear3, linear4 (10 out)
MODEL = {"hidden": [64, 48, 32]}


@pytest.fixture
def poison():
    """A weight estimator (STE) whose projection writes one NaN into the weight of the layer with ``rows``
    outputs, from epoch ``at_epoch`` (0-based) on."""

    @register_estimator("poison_ste")
    class PoisonSte(Estimator):
        kinds = ("weight",)
        has_constraint = True

        def __init__(self, rows: int = 32, at_epoch: int = 1):
            super().__init__()
            self.rows, self.at_epoch = rows, at_epoch

        def quantize(self, x, q):
            return sign_ste(x)

        def constrain_(self, w, q):
            if self.progress.epoch >= self.at_epoch and w.shape[0] == self.rows:
                w[0, 0] = float("nan")

    yield "poison_ste"
    ESTIMATORS.unregister("poison_ste")


@pytest.fixture
def inf_input_model():
    """mlp with a module before the second linear that puts +inf into one activation on its 5th training call."""

    class InfOnce(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))  # model state: a replay repeats it

        def forward(self, x):
            if self.training:
                self.calls += 1
                if int(self.calls) == 5:
                    x = x.clone()
                    x[0, 0] = float("inf")
            return x

    def inf_mlp(spec, num_classes, in_shape, hidden=(64, 48)):
        layers = [nn.Flatten(), spec.without_activation().linear(64, hidden[0], bias=False),
                  nn.BatchNorm1d(hidden[0]), nn.Hardtanh(), InfOnce(), spec.linear(hidden[0], hidden[1], bias=False),
                  nn.BatchNorm1d(hidden[1]), nn.Hardtanh(), spec.linear(hidden[1], num_classes)]
        return nn.Sequential(*layers)

    register_model("inf_mlp")(inf_mlp)
    yield "inf_mlp"
    MODELS.unregister("inf_mlp")


def _cfg(**kw):
    return {**TINY, "epochs": 3, "a_bits": 1, "seed": 0, "diagnostics": False,
            "model_args": {**MODEL, "binarize_first_last": True}, **kw}


def test_a_nan_weight_ends_the_run_diverged_naming_its_layer(poison):
    res = train(resolve(_cfg(estimator=poison)))
    assert res.status == "diverged"
    assert "'linear3'" in res.message and "weight" in res.message and "epoch 2" in res.message, res.message
    assert "\n" not in res.message
    assert len(res.history) == 2 and res.history[-1]["diverged"]


def test_one_inf_input_names_the_layer_that_binarized_it(inf_input_model):
    # DSQ on weights and activations: its backward turns the inf into a NaN range u (the forward stays finite),
    # and the NaN then spreads to every layer; the message names where it entered
    res = train(resolve(_cfg(estimator="dsq", model=inf_input_model, model_args={}, activation_estimator="dsq")))
    assert res.status == "diverged"
    assert "input of layer 'linear2'" in res.message and "1 inf" in res.message, res.message
    assert "step 5" in res.message and "epoch 1" in res.message, res.message


def test_non_finite_init_diverges_before_the_first_epoch(poison):
    res = train(resolve(_cfg(estimator=poison, estimator_hparams={"at_epoch": 0, "rows": 48})))
    assert res.status == "diverged" and "'linear2'" in res.message and "before the first epoch" in res.message


def test_cli_exits_3_with_one_line(poison, capsys):
    code = main(["run", "-e", poison, "-m", "mlp", "-d", "digits", "--epochs", "3", "--no-track",
                 "--set", "model.hidden=[64,48,32]", "--set", "model.binarize_first_last=true", "--set", "threads=1"])
    out = capsys.readouterr()
    assert code == 3
    lines = [line for line in (out.out + out.err).splitlines() if line.startswith("DIVERGED:")]
    assert len(lines) == 1 and "'linear3'" in lines[0], out.out + out.err
