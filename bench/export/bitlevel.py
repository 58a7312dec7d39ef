"""The bit-level reference inference of an exported network: what a deployment computes, in plain torch.

Binary layers on bits are XNOR-popcount over packed int64 words (``bench.export.bits``): integer arithmetic only,
no float sign anywhere; their outputs become bits again by an integer comparison with the folded thresholds, or
real values (``dequant``) where a float layer, an average pool or the logits follow. Float runs only where the
network has float layers, and where a binary layer's input is real (the first layer on pixels: float x binary,
with the weights unpacked from their bits).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bench.export.bits import pack_words, unpack_signs, xnor_conv2d, xnor_linear


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


class BitNet:
    """A loaded exported graph, ready to run: the packed weights re-packed into words once."""

    def __init__(self, ops: list[dict[str, Any]], tensors: dict[str, Tensor]):
        self.ops = ops
        self.tensors = tensors
        self.words: dict[int, Tensor] = {}
        self.signs: dict[int, Tensor] = {}
        for i, op in enumerate(ops):
            if op["op"] in ("binary", "binary_real"):
                signs = unpack_signs(self.t(op, "weight_bits"), tuple(op["shape"]))
                self.signs[i] = signs
                if op["op"] == "binary":
                    self.words[i] = pack_words(signs.reshape(signs.shape[0], -1))

    def t(self, op: dict[str, Any], role: str) -> Tensor | None:
        name = op["tensors"].get(role)
        return self.tensors[name] if name is not None else None

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Logits of a batch of normalised images."""
        x = x.float().cpu()
        for i, op in enumerate(self.ops):
            x = self.step(i, op, x)
        return x

    def step(self, i: int, op: dict[str, Any], x: Tensor) -> Tensor:
        kind = op["op"]
        if kind == "binarize":
            return x >= 0  # the sign of a real activation, sign(0) = +1, kept as bits
        if kind == "binary":
            if op["kind"] == "linear":
                return xnor_linear(pack_words(x), self.words[i], self.signs[i][0].numel())
            return xnor_conv2d(x, self.words[i], tuple(op["shape"][2:]), tuple(op["stride"]), tuple(op["padding"]),
                               tuple(op["dilation"]))
        if kind == "threshold":
            t = _per_channel(self.t(op, "thresh").long(), x)
            flip = _per_channel(self.t(op, "flip"), x)
            return torch.where(flip, x <= t, x >= t)
        if kind == "pool_int":
            d = _per_channel(self.t(op, "direction").long(), x)
            pooled = F.max_pool2d((x * d).double(), op["kernel"], op["stride"], op["padding"], op["dilation"],
                                  op["ceil_mode"])
            return pooled.long() * d
        if kind == "dequant":
            return self.dequant(op, x)
        if kind == "binary_real":
            return self.binary_real(i, op, x)
        return float_step(op, x, lambda role: self.t(op, role))

    def dequant(self, op: dict[str, Any], x: Tensor) -> Tensor:
        y = x.float() * _per_channel(self.t(op, "scale"), x)
        if self.t(op, "bias") is not None:
            y = y + _per_channel(self.t(op, "bias"), x)
        if self.t(op, "alpha") is not None:
            y = y * _per_channel(self.t(op, "alpha"), x)
        return y

    def binary_real(self, i: int, op: dict[str, Any], x: Tensor) -> Tensor:
        """Float x binary, as the simulated layer computes it: weights +-s_c from the bits, then the bias, then
        alpha."""
        signs = self.signs[i]
        w = torch.where(signs, 1.0, -1.0) * self.t(op, "scale").view(-1, *([1] * (signs.dim() - 1)))
        bias = self.t(op, "bias")
        if op["kind"] == "linear":
            y = F.linear(x, w, bias)
        else:
            y = F.conv2d(x, w, bias, tuple(op["stride"]), tuple(op["padding"]), tuple(op["dilation"]))
        alpha = self.t(op, "alpha")
        return y * _per_channel(alpha, y) if alpha is not None else y


def float_step(op: dict[str, Any], x: Tensor, t: Any) -> Tensor:
    """One full-precision operation of the graph, as torch's module computes it."""
    kind = op["op"]
    if kind == "linear":
        return F.linear(x, t("weight"), t("bias"))
    if kind == "conv2d":
        return F.conv2d(x, t("weight"), t("bias"), tuple(op["stride"]), tuple(op["padding"]), tuple(op["dilation"]),
                         op["groups"])
    if kind == "batchnorm":
        return F.batch_norm(x, t("mean"), t("var"), t("weight"), t("bias"), False, 0.0, op["eps"])
    if kind == "hardtanh":
        return F.hardtanh(x, op["min"], op["max"])
    if kind == "relu":
        return F.relu(x)
    if kind == "prelu":
        return F.prelu(x, t("weight"))
    if kind == "identity":
        return x
    if kind == "maxpool":
        return F.max_pool2d(x, op["kernel"], op["stride"], op["padding"], op["dilation"], op["ceil_mode"])
    if kind == "avgpool":
        return F.avg_pool2d(x, op["kernel"], op["stride"], op["padding"], op["ceil_mode"], op["count_include_pad"])
    if kind == "adaptive_avgpool":
        return F.adaptive_avg_pool2d(x, op["output_size"])
    if kind == "flatten":
        return torch.flatten(x, op["start_dim"], op.get("end_dim", -1))
    raise ValueError(f"unknown op {kind!r}")
