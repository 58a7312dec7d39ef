"""Multi-layer perceptron for small inputs (digits, MNIST)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bench.layers import FP, BinarySpec
from bench.models import default_act, make_act, register_model


@register_model("mlp")
def mlp(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], binarize_first_last: bool = False,
        hidden: Sequence[int] = (512, 512, 512), act: str | None = None) -> nn.Module:
    """Flatten -> Linear -> BN -> act, repeated, -> Linear. Hidden linears are binary; first/last FP by default."""
    act = default_act(spec, act)
    in_features = 1
    for d in in_shape:
        in_features *= d
    sizes = [in_features, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for i in range(len(hidden)):
        first = i == 0
        layer_spec = (spec.without_activation() if binarize_first_last else FP) if first else spec
        layers += [layer_spec.linear(sizes[i], sizes[i + 1], bias=False), nn.BatchNorm1d(sizes[i + 1]),
                   make_act(act, sizes[i + 1])]
    layers.append((spec if binarize_first_last else FP).linear(sizes[-1], num_classes))
    return nn.Sequential(*layers)
