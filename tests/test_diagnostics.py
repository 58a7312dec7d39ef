"""Diagnostics: BiPer's QE closed form, Laplace b, flips, saturation, ReSTE's indicators."""

from __future__ import annotations

import math

import pytest
import torch

import bench
from bench.diagnostics import laplace_b, qe_laplace, quantization_error
from bench.spec import resolve
from bench.train import train

from .conftest import TINY


def test_qe_closed_form_peak_and_limit():
    cs = [0.5 + i * 1e-3 for i in range(1000)]
    vals = [qe_laplace(c) for c in cs]
    i = max(range(len(vals)), key=vals.__getitem__)
    assert cs[i] == pytest.approx(0.955, abs=2e-3)
    assert vals[i] == pytest.approx(0.1028, abs=1e-4)
    assert qe_laplace(1e4) == pytest.approx(0.5 - 4 / math.pi**2, abs=1e-6)


@pytest.mark.parametrize(("b", "w0"), [(0.05, 19.1), (0.02, 20.0), (0.25, 20.0), (1.0, 20.0)])
def test_measured_qe_matches_closed_form_for_laplace_weights(b, w0):
    g = torch.Generator().manual_seed(0)
    w = torch.distributions.Laplace(0.0, b).sample((2_000_000,))  # uses the global RNG
    del g
    est = bench.create_estimator("biper", w0=w0)
    assert quantization_error(est, w) == pytest.approx(qe_laplace(b * w0), abs=1.5e-3)
    assert laplace_b(w) == pytest.approx(b, rel=5e-3)


def test_qe_for_plain_sign_estimators():
    w = torch.tensor([-2.0, -1.0, 1.0, 2.0])
    assert quantization_error(bench.create_estimator("ste"), w) == pytest.approx(0.25)


def test_training_logs_per_layer_diagnostics():
    res = train(resolve({**TINY, "estimator": "reste", "epochs": 2}))
    last = res.history[-1]
    layers = [k for k in last if k.startswith("diag/") and k.endswith("/qe") and k.count("/") == 2]
    assert layers, "per-layer QE logged"
    for key in ("diag/qe", "diag/laplace_b", "diag/flip", "diag/saturation", "diag/fitting_error",
                "diag/grad_stability"):
        assert key in last and math.isfinite(last[key])
    assert res.history[0]["diag/flip"] > 0  # the first epoch is compared with the signs at initialisation
    off = train(resolve({**TINY, "estimator": "reste", "epochs": 1, "diagnostics": False}))
    assert not any(k.startswith("diag/") for k in off.history[0])


def test_saturation_is_share_outside_support():
    from bench.diagnostics import DiagnosticsTracker
    from bench.layers import BinaryLinear

    layer = BinaryLinear(4, 2, weight_estimator=bench.create_estimator("clipped_ste"))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 2.0, -3.0, 0.1], [0.2, -0.3, 0.4, 1.5]]))
    stats = DiagnosticsTracker(torch.nn.Sequential(layer)).collect()
    assert stats["diag/saturation"] == pytest.approx(3 / 8)
