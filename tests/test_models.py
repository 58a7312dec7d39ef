"""Every registered model runs forward and backward at W1A1, W1A32 and FP32."""

from __future__ import annotations

import pytest
import torch

from bench import create_estimator, list_estimators
from bench.estimator import get_estimator_class as est_class
from bench.layers import BinaryConv2d, BinaryLinear, BinarySpec, binary_layers
from bench.models import create_model, list_models

SHAPES = {"mlp": (1, 8, 8), "resnet34": (3, 112, 112)}
BITS = {"W1A1": (True, True), "W1A32": (True, False), "FP32": (False, False)}


@pytest.mark.parametrize("bits", list(BITS))
@pytest.mark.parametrize("name", list_models())
def test_model_forward_backward(name, bits):
    torch.manual_seed(0)
    w, a = BITS[bits]
    est = create_estimator("ste")
    spec = BinarySpec(est if w else None, create_estimator("approx_sign") if a else None, "alpha" if w else "none")
    shape = SHAPES.get(name, (3, 32, 32))
    model = create_model(name, spec, num_classes=10, in_shape=shape)
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    layers = binary_layers(model)
    assert bool(layers) == w
    for i, (_, layer) in enumerate(layers):
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
        if i > 0:  # a binarized first layer keeps the real image as input
            assert (layer.input_quantizer is not None) == a


def test_first_and_last_layers_full_precision_by_default():
    spec = BinarySpec(create_estimator("ste"), create_estimator("approx_sign"), "none")
    m = create_model("resnet20", spec, 10, (3, 32, 32))
    assert type(m.conv1) is torch.nn.Conv2d and type(m.fc) is torch.nn.Linear
    m2 = create_model("resnet20", spec, 10, (3, 32, 32), binarize_first_last=True)
    assert isinstance(m2.conv1, BinaryConv2d) and m2.conv1.input_quantizer is None
    assert isinstance(m2.fc, BinaryLinear)
    assert all(isinstance(layer, (BinaryConv2d, BinaryLinear)) for _, layer in binary_layers(create_model(
        "vgg16", BinarySpec(create_estimator("ste"), None, "none"), 10, (3, 32, 32))))


def test_resnet18_imagenet_size_is_bireal():
    spec = BinarySpec(create_estimator("ste"), create_estimator("approx_sign"), "none")
    m = create_model("resnet18", spec, 1000, (3, 224, 224))
    assert type(m).__name__ == "ImageNetResNet"
    assert len(binary_layers(m)) == 16  # 8 basic blocks x 2 binary convs, each with its own shortcut
    assert len(binary_layers(create_model("resnet18", spec, 10, (3, 32, 32)))) == 16


def test_binary_conv_keeps_conv_options_and_scalings():
    torch.manual_seed(0)
    for scaling in ("none", "mean", "alpha"):
        conv = BinaryConv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, bias=True,
                            weight_estimator=create_estimator("ste"), scaling=scaling)
        x = torch.randn(1, 4, 9, 9)
        wb = torch.where(conv.weight >= 0, 1.0, -1.0)
        if scaling == "mean":
            wb = wb * conv.weight.abs().mean(dim=(1, 2, 3), keepdim=True)
        ref = torch.nn.functional.conv2d(x, wb, conv.bias, 2, 2, 2, 2)
        if scaling == "alpha":
            ref = ref * conv.alpha.view(1, -1, 1, 1)
        assert torch.allclose(conv(x), ref, atol=1e-5)


def test_unknown_model_argument_is_clear():
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown argument 'hiden' for model 'mlp'.*did you mean: hidden"):
        create_model("mlp", BinarySpec(), 10, (1, 8, 8), hiden=[3])


@pytest.mark.parametrize("shape", [(4, 8, 28, 28), (3, 5, 7, 7)], ids=["even", "odd"])
def test_evaluation_max_pool_gives_the_parents_values_and_training_its_gradient(shape):
    """bench.models.MaxPool2d pools in channels_last order without a gradient: the same values as nn.MaxPool2d
    (binary inputs full of ties, NaN and infinities included), a contiguous output; with a gradient it is the
    parent's own path (the same gradient, ties routed as nn.MaxPool2d routes them)."""
    from torch import nn

    from bench.models import MaxPool2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    special = x.clone()
    special[0, 0, 0, 0], special[0, 1, 2, 3], special[-1, -1, -1, -1] = float("nan"), float("inf"), -float("inf")
    for inp in (x, torch.sign(x), special):
        with torch.no_grad():
            got, want = MaxPool2d(2)(inp), nn.MaxPool2d(2)(inp)
        assert got.is_contiguous() and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    for inp in (x, torch.sign(x)):
        a, b = inp.clone().requires_grad_(), inp.clone().requires_grad_()
        MaxPool2d(2)(a).square().sum().backward()
        nn.MaxPool2d(2)(b).square().sum().backward()
        assert torch.equal(a.grad, b.grad)


def _resnet20(estimator: str):
    from bench.data import get_dataset
    from bench.spec import resolve
    from bench.train import build_model

    # W1A32: binary activations would turn the conv algorithms' rounding differences (by layout) into sign flips
    cfg = resolve({"model": "resnet20", "dataset": "cifar10", "estimator": estimator, "seed": 0, "a_bits": 32}).config
    torch.manual_seed(0)
    model, _, _ = build_model(cfg, get_dataset("cifar10"))
    return model


WEIGHT_ESTIMATORS = [n for n in list_estimators() if "weight" in est_class(n).kinds and not n.startswith("test_")]


@pytest.mark.parametrize("estimator", WEIGHT_ESTIMATORS)
def test_channels_last_setting_converts_4d_tensors_and_leaves_estimator_state_alone(estimator):
    """The CUDA setting `channels_last` once called Module.to(memory_format=...), which fails on a 5-D tensor (VISPA's
    draws): seen on the first GPU run. Every estimator's model converts, 4-D tensors only, values unchanged."""
    import copy

    from bench.train import to_channels_last_

    model = _resnet20(estimator).eval()
    plain = copy.deepcopy(model)  # a first forward may set estimator state (DSQ's range): both models get one
    before = {n: t.clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}
    to_channels_last_(model)
    for n, t in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.equal(t, before[n]), n
        if t.dim() == 4:
            assert t.is_contiguous(memory_format=torch.channels_last), n
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)  # the same draws for a sampling estimator (VISPA)
        ref = plain(x)
        torch.manual_seed(1)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
