"""Model registry (timm style): ``list_models``, ``create_model``, ``@register_model``.

A model function takes ``(spec, num_classes, in_shape, binarize_first_last=False, **model_args)``: ``spec`` is
the :class:`bench.layers.BinarySpec` that makes its binarizable layers, ``in_shape`` is (C, H, W).
First and last layers stay full precision unless ``binarize_first_last``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bench.errors import ConfigError, did_you_mean
from bench.layers import BinarySpec, init_latents_
from bench.registry import Registry

ModelFn = Callable[..., nn.Module]
MODELS: Registry[ModelFn] = Registry(
    "model", ("bench.models.mlp", "bench.models.convnet", "bench.models.resnet_cifar", "bench.models.vgg",
     "bench.models.resnet_imagenet"),
    "binbench.models",
)


def register_model(name: str):
    return MODELS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.names(pattern)


def model_args(name: str) -> dict[str, Any]:
    """The model's own keyword arguments with their defaults."""
    sig = inspect.signature(MODELS.get(name))
    skip = {"spec", "num_classes", "in_shape"}
    return {p.name: p.default for p in sig.parameters.values() if p.name not in skip and p.default is not p.empty}


def create_model(name: str, spec: BinarySpec | None = None, num_classes: int = 10,
                 in_shape: tuple[int, int, int] = (3, 32, 32), **kwargs: Any) -> nn.Module:
    fn = MODELS.get(name)
    valid = model_args(name)
    for key in kwargs:
        if key not in valid:
            raise ConfigError(f"unknown argument {key!r} for model {name!r}{did_you_mean(key, valid)}; "
                              f"valid: {', '.join(valid)}")
    _check_size(name, fn, spec or BinarySpec(), num_classes, tuple(in_shape), kwargs)
    model = fn(spec=spec or BinarySpec(), num_classes=num_classes, in_shape=tuple(in_shape), **kwargs)
    # after the model function's own initialisation: estimators derive their state from the trained weights
    return init_latents_(model)


def _available_bytes() -> int | None:
    """This machine's available memory (Linux: MemAvailable), None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_size(name: str, fn: ModelFn, spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...],
                kwargs: dict[str, Any]) -> None:
    """Count the model's parameters on the meta device (nothing allocated) and refuse, in one line, a model whose
    weights alone (and their gradients and optimizer state, ~4 copies) would not fit in this machine's memory:
    building it would fail in the allocator, or be killed."""
    import torch

    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in fn(spec=spec, num_classes=num_classes, in_shape=in_shape,
                                          **kwargs).parameters())
    except Exception:  # noqa: BLE001 - a model or estimator that cannot build on meta: the real build decides
        return
    avail = _available_bytes()
    if avail is not None and 4 * 4 * n > avail:
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ConfigError(f"model {name!r}{f' ({args})' if args else ''} has {n:,} parameters: {4 * 4 * n / 2**30:.1f} "
                          f"GiB for weights, gradients and optimizer state, more than the {avail / 2**30:.1f} GiB "
                          "available; choose smaller model arguments (binbench list models)")


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, float]:
    """Multiply-accumulates of one forward pass on one input (``torch.utils.flop_counter.FlopCounterMode``'s
    FLOP counts / 2), per module name, each including its children's; ``""`` is the whole model. The one MAC
    counter: a suite's cost estimate takes the total, the report's complexity table each layer's own."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    model.eval()
    with torch.no_grad(), counter:
        model(torch.zeros(1, *in_shape))
    prefix = type(model).__name__ + "."
    per = {k[len(prefix):]: sum(v.values()) / 2 for k, v in counter.get_flop_counts().items() if k.startswith(prefix)}
    return {"": counter.get_total_flops() / 2, **per}


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` whose CPU evaluation (no gradient) pools in channels_last order: the same values (a maximum
    is exact), about 3x faster on a CPU, where NCHW max-pooling with indices cost as much as the convolutions in a
    small conv net's evaluation (an ensemble of 40 sampled networks evaluates it 42 times an epoch). Training and
    CUDA keep the parent's own path (its indices route the gradient)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.dim() != 4 or x.device.type != "cpu":
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def make_act(name: str, channels: int | None = None) -> nn.Module:
    """Activation modules by name: hardtanh, relu, prelu (with ``channels``) or identity."""
    # hardtanh for W1A1 as in the ReCU/BiPer code, relu for W1A32, prelu for VISPA's VGG-small
    if name == "hardtanh":
        return nn.Hardtanh(inplace=False)
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU(channels or 1)
    if name == "identity":
        return nn.Identity()
    raise ConfigError(f"unknown activation {name!r}; valid: hardtanh, relu, prelu, identity")


def default_act(spec: BinarySpec, act: str | None) -> str:
    return act if act is not None else ("hardtanh" if spec.binary_activations else "relu")
