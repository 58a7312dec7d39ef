"""Estimators derive their state from the weights the model trains (issue 21): ``init_latent_`` runs after the
model's own initialisation, for every registered model and a model a plugin registers.

Before the fix the layers called ``init_latent_`` at construction and resnet/vgg then re-initialised every conv
(kaiming): DSQ's range u was max|w| of discarded weights (47% of resnet20's weights outside it, no gradient) and
VISPA's ``m_init=xavier`` was overwritten. The spy below reads the weight it is handed; the model tests compare
it with the weight the optimizer sees.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import bench
from bench.diagnostics import DiagnosticsTracker
from bench.estimator import Estimator, get_estimator_class
from bench.layers import BinarySpec, binary_layers
from bench.models import MODELS, create_model, list_models, register_model

#: CIFAR-sized input for the CIFAR models, ImageNet-sized for the ImageNet ones (what their datasets give them)
SHAPES = {"resnet34": (3, 64, 64)}


class Spy(Estimator):
    """Remembers the weight ``init_latent_`` was given (a copy, and the tensor itself)."""

    name = "spy"
    kinds = ("weight",)

    def init_latent_(self, w, q) -> None:
        q.seen = w.detach().clone()
        q.seen_tensor = w

    def quantize(self, x, q):
        return bench.functional.sign_ste(x)


@pytest.fixture
def plugin_model():
    """A model registered the way a plugin does, that re-initialises its binary conv after building it."""

    def reinit_net(spec, num_classes, in_shape, width: int = 8):
        net = nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                            spec.conv(width, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=3.0)  # far from PyTorch's default init
        return net

    register_model("reinit_net")(reinit_net)
    yield "reinit_net"
    MODELS.unregister("reinit_net")


def _build(name: str, est: Estimator, scaling: str = "alpha") -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, BinarySpec(est, None, scaling), 10, SHAPES.get(name, (3, 32, 32)))


@pytest.mark.parametrize("model", list_models())
def test_init_latent_sees_the_weights_the_model_trains(model):
    net = _build(model, Spy(), "none")
    layers = binary_layers(net)
    assert layers, f"{model} has no binary layer"
    for path, layer in layers:
        q = layer.weight_quantizer
        assert q.seen_tensor is layer.weight, f"{model}.{path}: init_latent_ got another tensor"
        assert torch.equal(q.seen, layer.weight.detach()), f"{model}.{path}: the weights changed after init_latent_"


def test_init_latent_follows_a_plugin_models_own_init(plugin_model):
    net = _build(plugin_model, Spy(), "none")
    ((_, layer),) = binary_layers(net)
    assert torch.equal(layer.weight_quantizer.seen, layer.weight.detach())
    assert layer.weight.std() > 1.0  # the model's std=3 init, not the conv's default (~0.1)


def _derives_state(name: str) -> bool:
    cls = get_estimator_class(name)
    return "weight" in cls.kinds and cls.init_latent_ is not Estimator.init_latent_


def _state(q) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in [*q.named_parameters(), *q.named_buffers()]}


@pytest.mark.parametrize("model", list_models())
@pytest.mark.parametrize("name", [n for n in bench.list_estimators()
                                  if _derives_state(n) and not n.startswith("test_")])
def test_state_derived_from_the_weights_is_that_of_the_trained_weights(name, model):
    """For every estimator with an ``init_latent_`` (plugins too): the state it derived equals the state it derives
    from the model's final weights on a fresh quantizer."""
    est = bench.create_estimator(name)
    net = _build(model, est)
    for path, layer in binary_layers(net):
        q = layer.weight_quantizer
        fresh = est.quantizer("weight", tuple(layer.weight.shape))
        before = _state(fresh)
        w = layer.weight.detach().clone()
        with torch.no_grad():
            est.init_latent_(w, fresh)
        derived = {k: v for k, v in _state(fresh).items() if not torch.equal(v, before[k])}
        for key, value in derived.items():
            assert torch.equal(_state(q)[key], value), f"{name} on {model}.{path}: {key} is not that of its weights"


DSQ_MODELS = ["mlp", "convnet", "resnet20", "resnet18", "vgg_small", "vgg16"]


@pytest.mark.parametrize("model", DSQ_MODELS)
def test_dsq_range_is_max_of_trained_weights_and_saturation_low(model):
    net = _build(model, bench.create_estimator("dsq"))
    for path, layer in binary_layers(net):
        assert float(layer.weight_quantizer.u) == pytest.approx(float(layer.weight.detach().abs().max())), path
    stats = DiagnosticsTracker(net).collect()
    per_layer = {k: v for k, v in stats.items() if k.endswith("/saturation") and k != "diag/saturation"}
    assert per_layer and max(per_layer.values()) <= 0.05, per_layer


def test_vispa_xavier_m_on_resnet18():
    net = _build("resnet18", bench.create_estimator("vispa", m_init="xavier"))
    for path, layer in binary_layers(net):
        w = layer.weight.detach()
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        xavier = math.sqrt(2.0 / (fan_in + fan_out))
        assert w.std().item() == pytest.approx(xavier, rel=0.1), f"{path}: std {w.std():.4f}, xavier {xavier:.4f}"


def _deterministic_weight_estimators() -> list[str]:
    # test-only estimators other test modules register (test_*) are not estimators to hold to a layer's behaviour
    return [n for n in bench.list_estimators() if not n.startswith("test_")
            and "weight" in get_estimator_class(n).kinds and not get_estimator_class(n).stochastic]


@pytest.mark.parametrize("name", _deterministic_weight_estimators())
def test_probe_of_weights_is_the_conv_layer_holding_them(name):
    """``bench.probe(name, w)`` on kaiming conv weights gives the forward and surrogate of a conv layer holding w
    (before: DSQ was probed at u = 1 whatever the points, a layer uses max |w|)."""
    from bench.diagnostics import surrogate_grad
    from bench.estimator import Progress
    from bench.layers import init_latents_

    torch.manual_seed(0)
    est = bench.create_estimator(name)
    layer = init_latents_(BinarySpec(est, None, "alpha").conv(32, 64, 3, 1, 1))  # PyTorch's kaiming-uniform init
    stages = est.stages()
    est.set_progress(Progress.at(0.0, len(stages) - 1, stages[-1].name))  # the probe's default: last stage, e/E = 0
    q, w = layer.weight_quantizer, layer.weight.detach()
    fwd, grad = bench.probe(name, w)
    with torch.no_grad():
        assert torch.equal(fwd, q(w)), name
    assert torch.equal(grad, surrogate_grad(q, w)), name


def test_a_run_names_its_code_and_resume_does_not_continue_other_code(tmp_path, capsys, monkeypatch):
    """The run's code digest changes with its estimator's source; a checkpoint of other code is not continued."""
    import bench.origin as origin
    from bench.spec import resolve
    from bench.train import train

    cfg = {"estimator": "ste", "model": "mlp", "dataset": "digits", "epochs": 2, "threads": 1,
           "model_args": {"hidden": [16]}, "diagnostics": False, "checkpoint_dir": str(tmp_path)}
    spec = resolve(cfg)
    assert spec.code and spec.estimators == {"weight": "ste", "activation": "approx_sign"}
    first = train(spec)
    assert train(resolve({**cfg, "resume": True})).history == first.history  # same code: the ended run is kept
    capsys.readouterr()
    real = origin._file_digest
    monkeypatch.setattr(origin, "_file_digest", lambda path: real(path) + ("x" if path.endswith("ste.py") else ""))
    changed = resolve({**cfg, "resume": True})
    assert changed.key == spec.key and changed.code != spec.code
    again = train(changed)
    assert "other estimator code" in capsys.readouterr().err
    assert len(again.history) == 2 and again.status == "finished"  # trained from scratch


def test_resume_skips_only_trials_of_the_same_code(tmp_path):
    from bench.track import store as tracking

    class Run:
        def __init__(self, key, code):
            self.data = type("D", (), {"tags": {tracking.TRIAL_TAG: key, tracking.KEY_TAG: key,
                                                tracking.CODE_TAG: code, tracking.STATUS_TAG: "finished"}})()
            self.info = type("I", (), {"status": "FINISHED"})()

    runs = [Run("a", "c1"), Run("b", "c1")]
    orig = tracking.trial_runs
    tracking.trial_runs = lambda uri, exp: runs
    try:
        assert tracking.finished_keys("u", "e", {"a": "c1", "b": "c2"}) == {"a"}
        assert tracking.finished_keys("u", "e") == {"a", "b"}
    finally:
        tracking.trial_runs = orig


def test_report_provenance_names_estimator_code_and_bf16():
    """The report's provenance names each estimator's package, version and digest, and bf16 where runs used it."""
    import pandas as pd

    from bench.report.tables import _code_lines

    df = pd.DataFrame({"estimator": ["ste", "rsign_x"], "model": ["mlp", "mlp"], "bits": ["W1A1", "W1A1"],
                       "origin": ["ste: binbench 0.1.0 sha256:aaa", "rsign_x: my-pkg 2.0 sha256:bbb"],
                       "precision": ["float32", "bf16"]})
    code, precision = _code_lines(df)
    assert "ste: binbench 0.1.0 sha256:aaa" in code and "rsign_x: my-pkg 2.0 sha256:bbb" in code
    assert precision.startswith("precision: bf16 autocast in 1 of 2 runs (rsign_x mlp W1A1)")
    old = pd.DataFrame({"estimator": ["ste"], "model": ["mlp"], "bits": ["W1A1"], "origin": [""],
                        "precision": ["float32"]})
    assert _code_lines(old) == ["estimator code (package version, source digest): not recorded",
                                "precision: float32"]
