"""The exported graph as an ONNX model, built with the ``onnx`` package's helpers from the exported file (not by
tracing torch: ``torch.onnx`` has lost or changed ``sign`` before, PyTorch#51033).

The sign survives because no ONNX ``Sign`` is used (it gives 0 at 0): a binary activation is
``Where(x >= 0, +1, -1)``, a folded threshold ``Where(d >= T)`` (``d <= T`` where flipped). The weights stay packed
in the ONNX file too (one bit each, a uint8 initializer) and are unpacked in the graph (BitShift, BitwiseAnd,
Cast: opset 18); the binary layers then multiply +-1 by +-1 in float, which is exact for integers below 2^24, so
the dot products are the integers the bit-level inference computes. Float layers map to their ONNX operators.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import BinbenchError

OPSET = 18


class _Builder:
    def __init__(self) -> None:
        from onnx import helper

        self.helper = helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def const(self, value: Any, hint: str = "c") -> str:
        from onnx import numpy_helper

        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], **attrs))
        return out

    def pm1(self, cond: str) -> str:
        """+1 where ``cond``, -1 elsewhere (float)."""
        return self.node("Where", [cond, self.const(np.float32(1.0)), self.const(np.float32(-1.0))])

    def unpack(self, stream: torch.Tensor, shape: list[int], hint: str) -> str:
        """The +-1 float weight of ``shape`` from its packed bit stream, in the graph."""
        n = int(np.prod(shape))
        b = self.node("Unsqueeze", [self.const(stream.numpy().astype(np.uint8), hint), self.const(np.int64([1]))])
        bits = self.node("BitShift", [b, self.const(np.arange(7, -1, -1, dtype=np.uint8))], direction="RIGHT")
        bits = self.node("BitwiseAnd", [bits, self.const(np.uint8(1))])
        flat = self.node("Reshape", [bits, self.const(np.int64([-1]))])
        flat = self.node("Slice", [flat, self.const(np.int64([0])), self.const(np.int64([n]))])
        one = self.node("Cast", [flat], to=1)  # FLOAT
        pm = self.node("Sub", [self.node("Mul", [one, self.const(np.float32(2.0))]), self.const(np.float32(1.0))])
        return self.node("Reshape", [pm, self.const(np.int64(shape))])


def _channel(t: torch.Tensor, rank: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast over (N, C) or (N, C, H, W)."""
    return t.detach().float().numpy().reshape(-1, *([1] * (rank - 2)))


def _pairs(v: list[int]) -> list[int]:
    return [int(v[0]), int(v[1]), int(v[0]), int(v[1])]  # ONNX pads: begins then ends


def _shapes(net: Any, input_shape: list[int]) -> list[tuple[int, ...]]:
    """The shape each op receives, from one run of the bit-level network on a blank image."""
    x = torch.zeros(1, *input_shape)
    shapes = []
    with torch.no_grad():
        for i, op in enumerate(net.ops):
            shapes.append(tuple(x.shape))
            x = net.step(i, op, x)
    return shapes


def _conv_attrs(op: dict[str, Any]) -> dict[str, Any]:
    return {"strides": list(op["stride"]), "pads": _pairs(op["padding"]), "dilations": list(op["dilation"])}


def _binary_op(b: _Builder, i: int, op: dict[str, Any], x: str, t: Any, rank: int) -> str:
    """The ops of the binary part: binarize, binary (+-1 x +-1), threshold, pool_int, dequant, binary_real."""
    kind = op["op"]
    if kind == "binarize":
        return b.pm1(b.node("GreaterOrEqual", [x, b.const(np.float32(0.0))]))
    if kind in ("binary", "binary_real"):
        w = b.unpack(t("weight_bits"), op["shape"], f"w{i}")
        if kind == "binary_real":
            scale = t("scale").float().numpy().reshape(-1, *([1] * (len(op["shape"]) - 1)))  # per output row
            w = b.node("Mul", [w, b.const(scale)])
        bias = [b.const(t("bias"))] if kind == "binary_real" and t("bias") is not None else []
        if op["kind"] == "linear":
            y = b.node("Gemm", [x, w, *bias], transB=1)
        else:
            y = b.node("Conv", [x, w, *bias], **_conv_attrs(op))
        if kind == "binary_real" and t("alpha") is not None:
            y = b.node("Mul", [y, b.const(_channel(t("alpha"), rank))])
        return y
    if kind == "threshold":
        # d <= T is -d >= -T: one comparison with a per-channel sign (exact: small integers in float)
        sgn = 1.0 - 2.0 * t("flip").float()
        thr = b.const(_channel(t("thresh").float() * sgn, rank))
        return b.pm1(b.node("GreaterOrEqual", [b.node("Mul", [x, b.const(_channel(sgn, rank))]), thr]))
    if kind == "pool_int":
        d = b.const(_channel(t("direction").float(), rank))
        pooled = b.node("MaxPool", [b.node("Mul", [x, d])], kernel_shape=op["kernel"], strides=op["stride"],
                        pads=_pairs(op["padding"]), dilations=op["dilation"], ceil_mode=int(op["ceil_mode"]))
        return b.node("Mul", [pooled, d])
    y = b.node("Mul", [x, b.const(_channel(t("scale"), rank))])  # dequant
    if t("bias") is not None:
        y = b.node("Add", [y, b.const(_channel(t("bias"), rank))])
    if t("alpha") is not None:
        y = b.node("Mul", [y, b.const(_channel(t("alpha"), rank))])
    return y


def _float_op(b: _Builder, op: dict[str, Any], x: str, t: Any, shape: tuple[int, ...]) -> str:
    kind = op["op"]
    if kind == "linear":
        return b.node("Gemm", [x, b.const(t("weight")), *([b.const(t("bias"))] if t("bias") is not None else [])],
                      transB=1)
    if kind == "conv2d":
        return b.node("Conv", [x, b.const(t("weight")), *([b.const(t("bias"))] if t("bias") is not None else [])],
                      group=op["groups"], **_conv_attrs(op))
    if kind == "batchnorm":
        c = shape[1]
        w = t("weight") if t("weight") is not None else torch.ones(c)
        bias = t("bias") if t("bias") is not None else torch.zeros(c)
        return b.node("BatchNormalization", [x, b.const(w), b.const(bias), b.const(t("mean")), b.const(t("var"))],
                      epsilon=float(op["eps"]))
    if kind == "hardtanh":
        return b.node("Clip", [x, b.const(np.float32(op["min"])), b.const(np.float32(op["max"]))])
    if kind == "relu":
        return b.node("Relu", [x])
    if kind == "prelu":
        w = t("weight")
        return b.node("PRelu", [x, b.const(_channel(w, len(shape)) if w.numel() > 1 else w.reshape(1))])
    if kind == "identity":
        return x
    if kind == "maxpool":
        return b.node("MaxPool", [x], kernel_shape=op["kernel"], strides=op["stride"], pads=_pairs(op["padding"]),
                      dilations=op["dilation"], ceil_mode=int(op["ceil_mode"]))
    if kind == "avgpool":
        return b.node("AveragePool", [x], kernel_shape=op["kernel"], strides=op["stride"], pads=_pairs(op["padding"]),
                      ceil_mode=int(op["ceil_mode"]), count_include_pad=int(op["count_include_pad"]))
    if kind == "adaptive_avgpool":
        return _adaptive_avgpool(b, op, x, shape)
    if kind == "flatten" and op["start_dim"] == 1 and op.get("end_dim", -1) == -1:
        return b.node("Flatten", [x], axis=1)
    raise BinbenchError(f"op {kind} ({op.get('name')}) has no ONNX translation here")


def _adaptive_avgpool(b: _Builder, op: dict[str, Any], x: str, shape: tuple[int, ...]) -> str:
    out = op["output_size"]
    if list(out) == [1, 1]:
        return b.node("GlobalAveragePool", [x])
    h, w = shape[2], shape[3]
    if h % out[0] or w % out[1]:
        raise BinbenchError(f"adaptive average pool {op.get('name')}: {h}x{w} -> {out} is not a plain pool in ONNX")
    k = [h // out[0], w // out[1]]
    return b.node("AveragePool", [x], kernel_shape=k, strides=k)


def build_onnx(net: Any, manifest: dict[str, Any]) -> Any:
    """The ONNX ModelProto of a loaded exported network (``bench.export.bitlevel.BitNet``)."""
    import onnx
    from onnx import TensorProto, helper

    b = _Builder()
    shapes = _shapes(net, manifest["input"]["shape"])
    x = "input"
    for i, op in enumerate(net.ops):
        def t(role: str, op: dict[str, Any] = op) -> Any:
            return net.t(op, role)

        if op.get("part") == "binary":
            x = _binary_op(b, i, op, x, t, len(shapes[i]))
        else:
            x = _float_op(b, op, x, t, shapes[i])
    b.nodes.append(helper.make_node("Identity", [x], ["logits"]))
    graph = helper.make_graph(
        b.nodes, "binbench_bnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *manifest["input"]["shape"]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", manifest["num_classes"]])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="binbench")
    model.doc_string = f"binbench export of {manifest['model']} / {manifest.get('estimator')} (key {manifest['key']})"
    onnx.checker.check_model(model)
    return model


def save_onnx(net: Any, manifest: dict[str, Any], path: str | Path) -> Path:
    import onnx

    path = Path(path)
    onnx.save(build_onnx(net, manifest), str(path))
    return path


class OnnxNet:
    """An ONNX file run by onnxruntime on the CPU: ``net(x) -> logits`` like the bit-level network."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(["logits"], {"input": x.float().cpu().numpy()})[0])
