"""From a trained model to the exported graph: a chain of operations over real values, integers and bits.

The model is traced with ``torch.fx`` down to its layers (binary layers, quantizers, BatchNorm, activations, pools
stay whole); its graph must be a chain (each value used once, by the next operation): a residual ``add`` or a
concatenation is refused with one line. Each binary layer's weights are read from the layer's own forward
(``binary_weight()``, with the estimator in its export mode at the end of training): per output channel they must
be +-s_c, and become the sign bits and s_c; so the sign and the scale are exactly what the simulated forward used,
whatever the estimator binarizes (sin(w0 w), a standardised weight, the mean of a distribution).

The state of the value along the chain is ``real`` (floats), ``bits`` (signs, after a binary activation) or
``int`` (the integer dot products of a binary layer on bits). Between an ``int`` and the next binary activation,
everything per channel (the layer's scale s_c and alpha_c, its bias, BatchNorm, hardtanh/ReLU/PReLU and one
max-pool) is a monotone map of the integer, so sign(map(d)) is a threshold on d: ``d >= T_c``, or ``d <= T_c``
where the map decreases (BatchNorm's gamma < 0, a negative alpha). T_c is found by evaluating the map with the
simulated forward's own float operations on every integer d in [-n, n] (n the fan-in): the bits are then the
simulation's bits wherever the simulation's sum of +-s terms equals d s exactly (always for s = 1). A max-pool
before the sign pools the integers (a max where the map before the pool increases, a min where it decreases).
Everything else (a float layer, an average pool, a flatten, the logits) gets real values: ``dequant`` computes
(d s_c + b_c) alpha_c as the layer does, and the float modules follow as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

from bench.errors import BinbenchError
from bench.export.bits import pack_signs
from bench.layers import BINARY_LAYERS, BinaryConv2d, BinaryLinear

ELEMENTWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.Hardtanh, nn.ReLU, nn.PReLU, nn.Identity)


@dataclass(frozen=True)
class Graph:
    """The exported network: ``ops`` (JSON-able dicts, in order) and ``tensors`` (name -> tensor) they refer to."""

    ops: tuple[dict[str, Any], ...]
    tensors: dict[str, Tensor] = field(repr=False)


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*BINARY_LAYERS, *ELEMENTWISE, nn.Linear, nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d,
                              nn.AdaptiveAvgPool2d, nn.Flatten)) or super().is_leaf_module(m, qualname)


def chain(model: nn.Module, name: str) -> list[tuple[str, Any]]:
    """The model's operations in order, as (qualified name, module) or ("flatten", start_dim); a graph that is not
    a chain is refused."""
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx cannot trace data-dependent Python control flow
        raise BinbenchError(f"model {name!r} cannot be traced for export ({type(exc).__name__}: {exc}); the "
                            "exporter handles chains of layers (mlp, convnet, vgg_small, vgg16)") from None
    modules = dict(model.named_modules())
    out: list[tuple[str, Any]] = []
    prev = None
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        inputs = [a for a in node.all_input_nodes]
        if len(inputs) != 1 or (prev is not None and inputs[0] is not prev) or len(node.users) > 1:
            raise BinbenchError(f"model {name!r} is not a chain of layers at {node.name} (a residual connection or "
                                "a branch): the bit-level exporter handles chains (mlp, convnet, vgg_small, vgg16) "
                                "only; export the others from the simulated model")
        if node.op == "call_module":
            out.append((node.target, modules[node.target]))
        elif (node.op == "call_method" and node.target == "flatten") or node.target is torch.flatten:
            out.append(("flatten", int(node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0))))
        else:
            raise BinbenchError(f"model {name!r} applies {node.target} at {node.name}: the exporter knows layers, "
                                "pools, activations and flatten only")
        prev = node
    return out


def weight_signs(layer: nn.Module, where: str) -> tuple[Tensor, Tensor]:
    """(positive, scale): the layer's binary weight as the simulated forward uses it, +-scale_c per channel."""
    with torch.no_grad():
        wb = layer.binary_weight().detach().float().cpu()
    flat = wb.reshape(wb.shape[0], -1)
    scale = flat.abs().amax(1)
    if not torch.equal(flat.abs(), scale[:, None].expand_as(flat)):
        raise BinbenchError(f"layer {where}: its binarized weight is not +-s per output channel (the estimator "
                            f"{layer.weight_quantizer.estimator.name!r} gives more than two values): cannot pack it")
    return wb >= 0, scale


def activation_scale(layer: nn.Module, where: str) -> float:
    """s_a of a layer's activation quantizer in evaluation, checked to be s_a sign(x) with sign(0) = +1."""
    q = layer.input_quantizer
    c = layer._in_channels()
    probe = torch.tensor([-3.0, -1.0, -1e-30, 0.0, 1e-30, 1.0, 3.0])
    x = probe.view(-1, 1).expand(-1, c).contiguous()
    if isinstance(layer, BinaryConv2d):
        x = x.view(-1, c, 1, 1)
    with torch.no_grad():
        y = q(x.to(layer.weight.device)).detach().float().cpu().reshape(len(probe), c)
    s = y[-2]
    expected = torch.where(probe.view(-1, 1) < 0, -s, s).expand_as(y)
    if not (torch.equal(y, expected) and bool((s > 0).all()) and bool((s == s[0]).all())):
        raise BinbenchError(f"layer {where}: the activation estimator {q.estimator.name!r} does not binarize as "
                            "s sign(x) in evaluation (a threshold or a per-channel scale): it cannot be exported "
                            "as XNOR-popcount; export needs sign activations")
    return float(s[0])


@dataclass
class _Pending:
    """The integer output of a binary layer on bits and the per-channel modules after it, not yet folded."""

    index: int  # the op that produced it
    conv: bool
    fan_in: int
    scale: Tensor  # s_a s_c: the value of one +1 term
    bias: Tensor | None
    alpha: Tensor | None
    modules: list[tuple[str, nn.Module]] = field(default_factory=list)


def layer_affine(layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    bias = layer.bias.detach().float().cpu() if layer.bias is not None else None
    alpha = layer.alpha.detach().float().cpu() if getattr(layer, "scaling", "") == "alpha" else None
    return bias, alpha


def is_binary(m: Any) -> bool:
    return isinstance(m, (BinaryConv2d, BinaryLinear)) and m.weight_quantizer is not None


# -- the builder ---------------------------------------------------------------------------------------------
class _Builder:
    """Walks the chain once, emitting ops; holds the state of the value (real, bits or int) between layers."""

    def __init__(self, name: str):
        self.name = name
        self.ops: list[dict[str, Any]] = []
        self.tensors: dict[str, Tensor] = {}
        self.state = "real"
        self.pending: _Pending | None = None

    def emit(self, op: str, where: str, part: str, tensors: dict[str, Tensor | None] | None = None,
             **attrs: Any) -> int:
        i = len(self.ops)
        names = {}
        for role, t in (tensors or {}).items():
            if t is not None:
                names[role] = f"{i}.{role}"
                self.tensors[names[role]] = t.detach().cpu().contiguous()
        self.ops.append({"op": op, "name": where, "part": part, **attrs, "tensors": names})
        return i

    def add(self, where: str, m: Any) -> None:
        if isinstance(m, int):  # flatten(start_dim)
            self.to_real()
            self.emit("flatten", where, "float", start_dim=m)
        elif is_binary(m):
            self.binary(where, m)
        elif isinstance(m, BINARY_LAYERS):
            raise BinbenchError(f"layer {where} binarizes its input but not its weights: the exporter handles binary "
                                "weights (W1A1, W1A32)")
        elif self.state == "int" and isinstance(m, (*ELEMENTWISE, nn.MaxPool2d)):
            self.pending.modules.append((where, m))
        else:
            self.to_real()
            op, attrs, tensors = float_op(m, where)
            self.emit(op, where, "float", tensors, **attrs)

    def binary(self, where: str, m: nn.Module) -> None:
        positive, scale = weight_signs(m, where)
        conv = isinstance(m, BinaryConv2d)
        geometry = ({"stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation)}
                    if conv else {})
        if conv and (m.groups != 1 or m.padding_mode != "zeros"):
            raise BinbenchError(f"layer {where}: grouped or non-zero-padded binary convolutions are not exported")
        bias, alpha = layer_affine(m)
        bits = {"weight_bits": torch.from_numpy(pack_signs(positive))}
        if m.input_quantizer is None:  # real inputs: float x binary, computed as the layer does
            self.to_real()
            self.emit("binary_real", where, "binary", {**bits, "scale": scale, "bias": bias, "alpha": alpha},
                      kind="conv2d" if conv else "linear", shape=list(positive.shape), **geometry)
            return
        s_a = activation_scale(m, where)
        if self.state == "int":
            self.fold()
        elif self.state == "real":
            self.emit("binarize", where, "binary")
        i = self.emit("binary", where, "binary", bits, kind="conv2d" if conv else "linear",
                      shape=list(positive.shape), **geometry)
        fan_in = positive[0].numel()
        self.state, self.pending = "int", _Pending(i, conv, fan_in, (scale * s_a).float(), bias, alpha)

    def to_real(self) -> None:
        if self.state != "int":
            self.state = "real"
            return
        p = self.pending
        self.emit("dequant", self.ops[p.index]["name"], "binary", {"scale": p.scale, "bias": p.bias, "alpha": p.alpha})
        self.state, self.pending = "real", None
        for where, m in p.modules:
            op, attrs, tensors = float_op(m, where)
            self.emit(op, where, "float", tensors, **attrs)

    def fold(self) -> None:
        """The pending integer output and its per-channel modules, up to the next sign: a threshold per channel."""
        p = self.pending
        where = self.ops[p.index]["name"]
        pools = [k for k, (_, m) in enumerate(p.modules) if isinstance(m, nn.MaxPool2d)]
        if len(pools) > 1:
            raise BinbenchError(f"layer {where}: two max-pools before the next sign cannot be folded")
        y = grid_values(p)
        pre = p.modules[:pools[0]] if pools else p.modules
        with torch.no_grad():
            for _, m in pre:
                y = m(y)
            if pools:
                direction = torch.where(y[-1] >= y[0], 1, -1).reshape(-1).to(torch.int8)
                pw, pm = p.modules[pools[0]]
                self.emit("pool_int", pw, "binary", {"direction": direction}, **pool_attrs(pm))
                for _, m in p.modules[pools[0] + 1:]:
                    y = m(y)
        thresh, flip = thresholds(y.reshape(y.shape[0], -1) >= 0, p.fan_in, where)
        self.emit("threshold", where, "binary", {"thresh": thresh, "flip": flip},
                  folded=[w for w, _ in p.modules])
        self.state, self.pending = "bits", None


def grid_values(p: _Pending) -> Tensor:
    """The layer's output for every integer dot product d in [-n, n], per channel, with the layer's own float
    operations ((d s + b) alpha): shape (2n + 1, C) or (2n + 1, C, 1, 1) for a convolution."""
    d = torch.arange(-p.fan_in, p.fan_in + 1, dtype=torch.float32)
    y = d[:, None] * p.scale[None]
    if p.bias is not None:
        y = y + p.bias
    if p.alpha is not None:
        y = y * p.alpha
    return y[:, :, None, None] if p.conv else y


def thresholds(bits: Tensor, n: int, where: str) -> tuple[Tensor, Tensor]:
    """(T, flip) per channel from the sign bits over d = -n..n: bit = d >= T, or d <= T where flip."""
    up = (bits[1:] >= bits[:-1]).all(0)
    down = (bits[1:] <= bits[:-1]).all(0)
    if not bool((up | down).all()):
        raise BinbenchError(f"layer {where}: the map from its dot product to the next sign is not monotone (a "
                            "PReLU with a negative slope?): it cannot be folded into a threshold")
    g = bits.shape[0]
    first = torch.where(bits.any(0), bits.to(torch.int64).argmax(0), torch.full_like(bits[0], g, dtype=torch.int64))
    t_up = first - n  # the first d whose bit is set; n + 1 for none
    t_down = bits.to(torch.int64).sum(0) - 1 - n  # the last d whose bit is set; -n - 1 for none
    flip = ~up & down
    return torch.where(flip, t_down, t_up).to(torch.int32), flip


def pool_attrs(m: nn.MaxPool2d) -> dict[str, Any]:
    def pair(v: Any) -> list[int]:
        return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]

    return {"kernel": pair(m.kernel_size), "stride": pair(m.stride if m.stride is not None else m.kernel_size),
            "padding": pair(m.padding), "dilation": pair(m.dilation), "ceil_mode": bool(m.ceil_mode)}


def float_op(m: nn.Module, where: str) -> tuple[str, dict[str, Any], dict[str, Tensor | None]]:
    """A full-precision module as (op, attributes, tensors): the layers an exported network keeps as they are."""
    t = lambda v: v.detach().float() if v is not None else None  # noqa: E731 - a local shorthand
    if isinstance(m, nn.Conv2d):
        return "conv2d", {"stride": list(m.stride), "padding": list(m.padding), "dilation": list(m.dilation),
                          "groups": m.groups}, {"weight": t(m.weight), "bias": t(m.bias)}
    if isinstance(m, nn.Linear):
        return "linear", {}, {"weight": t(m.weight), "bias": t(m.bias)}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return "batchnorm", {"eps": m.eps}, {"mean": t(m.running_mean), "var": t(m.running_var),
                                            "weight": t(m.weight), "bias": t(m.bias)}
    if isinstance(m, nn.Hardtanh):
        return "hardtanh", {"min": m.min_val, "max": m.max_val}, {}
    if isinstance(m, nn.ReLU):
        return "relu", {}, {}
    if isinstance(m, nn.PReLU):
        return "prelu", {}, {"weight": t(m.weight)}
    if isinstance(m, nn.Identity):
        return "identity", {}, {}
    if isinstance(m, nn.MaxPool2d):
        return "maxpool", pool_attrs(m), {}
    if isinstance(m, nn.AvgPool2d):
        return "avgpool", {"kernel": list(nn.modules.utils._pair(m.kernel_size)),
                           "stride": list(nn.modules.utils._pair(m.stride)),
                           "padding": list(nn.modules.utils._pair(m.padding)), "ceil_mode": bool(m.ceil_mode),
                           "count_include_pad": bool(m.count_include_pad)}, {}
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return "adaptive_avgpool", {"output_size": list(nn.modules.utils._pair(m.output_size))}, {}
    if isinstance(m, nn.Flatten):
        return "flatten", {"start_dim": m.start_dim, "end_dim": m.end_dim}, {}
    raise BinbenchError(f"layer {where}: {type(m).__name__} is not a layer the exporter knows")


def build_graph(model: nn.Module, name: str) -> Graph:
    """The exported graph of a model in evaluation mode, on the CPU."""
    model.eval()
    b = _Builder(name)
    for where, m in chain(model, name):
        b.add(where, m)
    b.to_real()
    return Graph(tuple(b.ops), b.tensors)
