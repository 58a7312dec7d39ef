"""CIFAR ResNets as the methods' official code builds them.

* ``resnet20``: Bi-Real style, a shortcut around every binary conv; stem conv -> BN -> act.
* ``resnet18``: one shortcut per two-conv block, stem conv -> BN (no act).
Downsampling shortcuts are parameter-free: AvgPool2d(2) and zero padding of the channels.
Head: global average pool -> BatchNorm1d -> FP linear.
"""

# as edmav4/BiPer, z-hXu/ReCU and snownus/bnn_vi (VISPA) build them; resnet18 is their common variant
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from bench.layers import FP, BinarySpec
from bench.models import default_act, make_act, register_model


class PadShortcut(nn.Module):
    """AvgPool2d(2) when striding, then zero-pad the channels to ``planes`` (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(2) if stride != 1 else nn.Identity()
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(x)
        return F.pad(x, (0, 0, 0, 0, *self.pad)) if self.pad != (0, 0) else x


def _shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    return PadShortcut(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()


class _TwoConvBlock(nn.Module):
    """Two binary 3x3 convs with BN and activation, and the parameter-free shortcut; forward wires them."""

    def __init__(self, spec: BinarySpec, in_planes: int, planes: int, stride: int, act: str):
        super().__init__()
        self.conv1 = spec.conv(in_planes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_act(act, planes)
        self.conv2 = spec.conv(planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_act(act, planes)
        self.shortcut = _shortcut(in_planes, planes, stride)


class BiRealBlock(_TwoConvBlock):
    """out1 = act(BN(conv1(x)) + sc(x)); out = act(BN(conv2(out1)) + out1): a shortcut around every conv."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(out)) + out)


class BasicBlock(_TwoConvBlock):
    """h = act(BN(conv1(x))); out = act(BN(conv2(h)) + sc(x)): one shortcut per block."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, block: type[nn.Module], blocks: list[int], widths: list[int], spec: BinarySpec,
                 num_classes: int, in_channels: int, act: str, stem_act: bool, stem_stride: int,
                 binarize_first_last: bool):
        super().__init__()
        first = spec.without_activation() if binarize_first_last else FP
        self.conv1 = first.conv(in_channels, widths[0], 3, stem_stride, 1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.stem_act = make_act(act, widths[0]) if stem_act else nn.Identity()
        layers = []
        in_planes = widths[0]
        for i, (n, planes) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if i == 0 else 2
            for j in range(n):
                layers.append(block(spec, in_planes, planes, stride if j == 0 else 1, act))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bn_head = nn.BatchNorm1d(in_planes)
        self.fc = (spec if binarize_first_last else FP).linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_act(self.bn1(self.conv1(x)))
        x = self.pool(self.layers(x)).flatten(1)
        return self.fc(self.bn_head(x))


@register_model("resnet20")
def resnet20(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], binarize_first_last: bool = False,
             act: str | None = None, stem_stride: int = 1) -> nn.Module:
    """CIFAR ResNet-20 (3 stages x 3 blocks, widths 16/32/64) with a Bi-Real shortcut around every binary conv."""
    return CifarResNet(BiRealBlock, [3, 3, 3], [16, 32, 64], spec, num_classes, in_shape[0],
                       default_act(spec, act), True, stem_stride, binarize_first_last)


@register_model("resnet18")
def resnet18(spec: BinarySpec, num_classes: int, in_shape: tuple[int, ...], binarize_first_last: bool = False,
             act: str | None = None, stem_stride: int | None = None) -> nn.Module:
    """ResNet-18: the CIFAR variant for inputs up to 64 px (stem stride 2 at 64 px, as the Tiny-ImageNet
    model of the official code); for ImageNet-size inputs (>= 112 px) the Bi-Real ImageNet ResNet-18."""
    # the CIFAR variant of the ReCU/BiPer/VISPA code; the 64 px stem is VISPA's Tiny-ImageNet model
    if in_shape[-1] >= 112:
        from bench.models.resnet_imagenet import imagenet_resnet

        return imagenet_resnet([2, 2, 2, 2], spec, num_classes, in_shape, binarize_first_last, act)
    stride = stem_stride if stem_stride is not None else (2 if in_shape[-1] >= 64 else 1)
    return CifarResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], spec, num_classes, in_shape[0],
                       default_act(spec, act), False, stride, binarize_first_last)
