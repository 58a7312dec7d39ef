"""One module that runs M identically shaped member models as one program.

Members are stacked along the batch dimension: the packed input is (M*B, ...), member m's batch being rows
m*B .. (m+1)*B. Every parameter-free op of a model's forward code (elementwise ops, additions, pooling, the
channel padding of a shortcut, flatten) then acts per sample, hence per member, unchanged; only the parametric
leaf modules are replaced by packed wrappers that hold references to the members' own modules:

* conv (binary or not): on CUDA one grouped ``F.conv2d`` over (B, M*C, H, W) with the members' (binarized)
  weights concatenated, groups = M * groups; elsewhere one ``F.conv2d`` per member (:attr:`PackedConv2d.grouped`);
  per-member input binarization, alpha scaling and bias;
* linear: one ``torch.baddbmm`` over (M, B, F) with the members' weights stacked;
* BatchNorm1d/2d: ``F.batch_norm`` over the stacked channels (B, M*C, ...), so each member keeps its own batch
  statistics; the members' running buffers become views of one stacked buffer, so the in-place update of the
  stacked buffer is the members' update, and the members' own modules (their evaluation, checkpoints) see it;
* PReLU: the members' slopes per member.

The members keep their parameters (gradients flow back to each member's own tensors, so each member keeps its
own optimizer), their quantizers (each estimator binarizes its own member's slice: per-tensor statistics stay
per member) and, for stochastic estimators, their own random stream (:class:`MemberRng`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.errors import ConfigError
from bench.layers import BinaryConv2d, BinaryLinear


class NotPackable(ConfigError):
    """The members' model cannot run as one packed program (callers train its members one by one)."""


class MemberRng:
    """A member's own random stream, swapped into the global generator around the calls that draw from it.

    A stochastic estimator draws from the global generator in its forward (as it does in a solo run); giving each
    member the generator state its solo run would have at that point makes its draws the solo run's draws."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        saved_cpu = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state(self.device) if self.cuda else None
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        try:
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            torch.set_rng_state(saved_cpu)
            if self.cuda:
                self.cuda_state = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(saved_cuda, self.device)


def _in_rng(rng: MemberRng | None):
    return rng.active() if rng is not None else contextlib.nullcontext()


def _sample_wise_key(layer: nn.Module) -> tuple | None:
    """What makes two layers' input binarizations the same function of each sample (``Estimator.sample_wise``:
    the estimator's class and attributes, the quantizer's mode), or None where the estimator is not sample-wise
    or its quantizer holds state."""
    q = layer.input_quantizer
    est = q.estimator
    if not est.sample_wise or next(q.parameters(), None) is not None or next(q.buffers(), None) is not None:
        return None
    return type(est), q.training, q.kind, repr(sorted(vars(est).items()))


class _PackedLeaf(nn.Module):
    """A packed wrapper: the members' modules are plain attributes (not submodules), so the packed model owns no
    parameters of its own and its ``parameters()`` are not a second copy of the members'."""

    def __init__(self, members: Sequence[nn.Module], rngs: Sequence[MemberRng | None]):
        super().__init__()
        object.__setattr__(self, "members", tuple(members))
        object.__setattr__(self, "rngs", tuple(rngs))

    @property
    def m(self) -> int:
        return len(self.members)

    def _weights(self) -> list[Tensor]:
        """Each member's weight as its own forward uses it (binarized by its own quantizer, in its own stream)."""
        out = []
        for layer, rng in zip(self.members, self.rngs, strict=True):
            if isinstance(layer, (BinaryConv2d, BinaryLinear)):
                with _in_rng(rng):
                    out.append(layer.binary_weight())
            else:
                out.append(layer.weight)
        return out

    def _inputs(self, xs: Tensor) -> Tensor:
        """Member-wise input binarization of xs (M, B, ...), as each member's layer binarizes its own batch; one
        call over the stacked batches of the members whose activation estimators are the same sample-wise
        function (``Estimator.sample_wise``), one call per member for the others."""
        first = self.members[0]
        if not isinstance(first, (BinaryConv2d, BinaryLinear)) or first.input_quantizer is None:
            return xs
        groups: dict[object, list[int]] = {}
        for i, layer in enumerate(self.members):
            key = _sample_wise_key(layer)
            groups.setdefault(i if key is None else key, []).append(i)
        if len(groups) == 1 and self.m > 1:  # one sample-wise function for all: one call, no copies
            return first.binary_input(xs.reshape(-1, *xs.shape[2:])).view(xs.shape)
        # unbind, not xs[i]: the backward of M indexings would zero-fill M tensors of the whole pack's size
        rows, outs = xs.unbind(0), [None] * self.m
        for idx in groups.values():
            if len(idx) == 1:
                with _in_rng(self.rngs[idx[0]]):
                    outs[idx[0]] = self.members[idx[0]].binary_input(rows[idx[0]])
                continue
            part = torch.stack([rows[i] for i in idx])
            shared = self.members[idx[0]].binary_input(part.reshape(-1, *xs.shape[2:])).view(part.shape)
            for i, row in zip(idx, shared.unbind(0), strict=True):
                outs[i] = row
        return torch.stack(outs)

    def _alpha(self) -> Tensor | None:
        if getattr(self.members[0], "scaling", "none") != "alpha":
            return None
        return torch.stack([layer.alpha for layer in self.members])  # (M, O)


class PackedConv2d(_PackedLeaf):
    #: one grouped convolution over the members (True), one convolution per member (False), or by device (None):
    #: grouped on CUDA, where one launch keeps the GPU busy; per member elsewhere, where a grouped convolution of
    #: M small groups ran 20% slower than M ordinary ones (a 15-member conv-net step on a 2-core CPU) and the
    #: per-member calls are the solo trial's own kernels
    grouped: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        m = self.m
        xs = self._inputs(x.view(m, -1, *x.shape[1:]))  # (M, B, C, H, W)
        grouped = self.grouped if self.grouped is not None else x.device.type == "cuda"
        out = self._grouped(xs) if grouped else self._per_member(xs)  # (M, B, O, H', W')
        alpha = self._alpha()
        if alpha is not None:
            out = out * alpha.reshape(m, 1, -1, 1, 1).to(out.dtype)
        return out.reshape(-1, *out.shape[2:])

    def _per_member(self, xs: Tensor) -> Tensor:
        return torch.stack([F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
                            for x, layer, w in zip(xs.unbind(0), self.members, self._weights(), strict=True)])

    def _grouped(self, xs: Tensor) -> Tensor:
        c0, m, b = self.members[0], self.m, xs.shape[1]
        inp = xs.transpose(0, 1).reshape(b, m * xs.shape[2], *xs.shape[3:])  # (B, M*C, H, W)
        weight = torch.cat(self._weights())
        bias = torch.cat([layer.bias for layer in self.members]) if c0.bias is not None else None
        out = F.conv2d(inp, weight, bias, c0.stride, c0.padding, c0.dilation, c0.groups * m)  # (B, M*O, H', W')
        return out.view(b, m, c0.out_channels, *out.shape[2:]).transpose(0, 1)


class PackedLinear(_PackedLeaf):
    def forward(self, x: Tensor) -> Tensor:
        m = self.m
        xs = self._inputs(x.view(m, -1, *x.shape[1:]))  # (M, B, ..., F)
        flat = xs.reshape(m, -1, xs.shape[-1])
        weight = torch.stack(self._weights())  # (M, O, F)
        if self.members[0].bias is not None:
            bias = torch.stack([layer.bias for layer in self.members]).unsqueeze(1)  # (M, 1, O)
            out = torch.baddbmm(bias.to(flat.dtype), flat, weight.transpose(1, 2))
        else:
            out = torch.bmm(flat, weight.transpose(1, 2))
        alpha = self._alpha()
        if alpha is not None:
            out = out * alpha.unsqueeze(1).to(out.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])  # (M*B, ..., O)


class PackedBatchNorm(_PackedLeaf):
    """BatchNorm over the members' stacked channels; each member's running buffers are views of the stacked ones."""

    def __init__(self, members: Sequence[nn.Module], rngs: Sequence[MemberRng | None]):
        super().__init__(members, rngs)
        b0 = members[0]
        # one module several times (an ensemble of samples of one network): evaluation only, its buffers as they are
        object.__setattr__(self, "shared", len({id(bn) for bn in members}) < len(members))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            if self.shared:
                break
            if getattr(b0, name, None) is None:
                continue
            stacked = torch.stack([getattr(bn, name) for bn in members]).detach().clone()
            self.register_buffer(name, stacked, persistent=False)
            for i, bn in enumerate(members):
                bn._buffers[name] = stacked[i]  # a view: the packed update is the member's update

    def forward(self, x: Tensor) -> Tensor:
        b0, m = self.members[0], self.m
        xs = x.view(m, -1, *x.shape[1:])
        b = xs.shape[1]
        inp = xs.transpose(0, 1).reshape(b, m * xs.shape[2], *xs.shape[3:])
        if self.shared:
            return self._shared_forward(inp, x.shape, b)
        if self.training and b0.track_running_stats:
            self.num_batches_tracked.add_(1)  # every member's count, through the views
        use_batch = self.training or not b0.track_running_stats
        weight = torch.cat([bn.weight for bn in self.members]) if b0.affine else None
        bias = torch.cat([bn.bias for bn in self.members]) if b0.affine else None
        # views of the stacked buffers: F.batch_norm's in-place update of the running statistics reaches them
        rm = self.running_mean.view(-1) if b0.track_running_stats else None
        rv = self.running_var.view(-1) if b0.track_running_stats else None
        out = F.batch_norm(inp, rm, rv, weight, bias, use_batch, b0.momentum, b0.eps)
        return out.view(b, m, -1, *out.shape[2:]).transpose(0, 1).reshape(x.shape)


    def _shared_forward(self, inp: Tensor, shape: torch.Size, b: int) -> Tensor:
        b0, m = self.members[0], self.m
        if self.training:
            raise NotPackable("a pack that holds one BatchNorm several times runs in evaluation mode only")
        stats = [b0.running_mean.repeat(m), b0.running_var.repeat(m)] if b0.track_running_stats else [None, None]
        weight = b0.weight.repeat(m) if b0.affine else None
        bias = b0.bias.repeat(m) if b0.affine else None
        out = F.batch_norm(inp, *stats, weight, bias, not b0.track_running_stats, 0.0, b0.eps)
        return out.view(b, m, -1, *out.shape[2:]).transpose(0, 1).reshape(shape)


class PackedPReLU(_PackedLeaf):
    def forward(self, x: Tensor) -> Tensor:
        m = self.m
        xs = x.view(m, -1, *x.shape[1:])
        w = torch.stack([p.weight for p in self.members])  # (M, C) or (M, 1)
        shape = (m, 1, w.shape[1]) + (1,) * (xs.dim() - 3) if xs.dim() > 2 else (m, w.shape[1])
        return torch.where(xs >= 0, xs, w.view(shape).to(xs.dtype) * xs).reshape(x.shape)


#: the leaf modules that pack, by exact type: a subclass may have a forward of its own, so it is refused
WRAPPERS: dict[type, type[_PackedLeaf]] = {
    nn.Conv2d: PackedConv2d, BinaryConv2d: PackedConv2d, nn.Linear: PackedLinear, BinaryLinear: PackedLinear,
    nn.BatchNorm1d: PackedBatchNorm, nn.BatchNorm2d: PackedBatchNorm, nn.PReLU: PackedPReLU,
}


def _check_leaf(name: str, modules: Sequence[nn.Module]) -> None:
    first = modules[0]
    if isinstance(first, nn.Conv2d) and first.padding_mode != "zeros":
        raise NotPackable(f"layer {name!r} pads with {first.padding_mode!r}: only zero padding is packed")
    if isinstance(first, nn.Conv2d) and len({(c.stride, c.padding, c.dilation, c.groups) for c in modules}) != 1:
        raise NotPackable(f"layer {name!r}: the members' convolutions differ in stride, padding, dilation or groups")
    if isinstance(first, nn.modules.batchnorm._BatchNorm) and first.momentum is None:
        raise NotPackable(f"layer {name!r}: BatchNorm with momentum=None (a cumulative average) is not packed")
    if isinstance(first, nn.modules.batchnorm._BatchNorm) and len({(b.eps, b.momentum) for b in modules}) != 1:
        raise NotPackable(f"layer {name!r}: the members' BatchNorm eps or momentum differ")
    # the layer's own tensors (weight, bias, alpha, BN buffers); its quantizers' state is each estimator's own
    shapes = {tuple((k, tuple(v.shape)) for k, v in [*mod.named_parameters(recurse=False),
                                                     *mod.named_buffers(recurse=False)]) for mod in modules}
    if len(shapes) != 1 or len({type(mod) for mod in modules}) != 1:
        raise NotPackable(f"layer {name!r} differs between the members (type or shapes)")
    if isinstance(first, (BinaryConv2d, BinaryLinear)):
        if len({mod.scaling for mod in modules}) != 1 or len({mod.input_quantizer is None for mod in modules}) != 1:
            raise NotPackable(f"layer {name!r}: the members differ in scaling or in binarizing its input")


def _pack_children(body: nn.Module, peers: Sequence[nn.Module], rngs: Sequence[MemberRng | None],
                   prefix: str) -> None:
    """Replace, in ``body`` (a copy of member 0), every parametric leaf by a wrapper over the members' modules."""
    for name, child in list(body.named_children()):
        path = f"{prefix}{name}"
        members = [p._modules[name] for p in peers]
        wrapper = WRAPPERS.get(type(child))
        if wrapper is not None:
            _check_leaf(path, members)
            body._modules[name] = wrapper(members, rngs)
            continue
        own = [n for n, _ in child.named_parameters(recurse=False)] + [n for n, _ in child.named_buffers(recurse=False)]
        if own:
            raise NotPackable(f"module {path!r} ({type(child).__name__}) holds parameters or buffers ({', '.join(own)})"
                              " and binbench has no packed form of it: its members train one by one")
        _pack_children(child, members, rngs, f"{path}.")


class PackedModel(nn.Module):
    """The members' models as one module: ``forward`` takes the members' batches stacked along dim 0."""

    def __init__(self, models: Sequence[nn.Module], rngs: Sequence[MemberRng | None] | None = None):
        super().__init__()
        if not models:
            raise ValueError("a pack needs at least one member")
        rngs = list(rngs) if rngs is not None else [None] * len(models)
        top = models[0]
        own = list(top.named_parameters(recurse=False)) + list(top.named_buffers(recurse=False))
        if own or type(top) in WRAPPERS:
            raise NotPackable(f"the model ({type(top).__name__}) holds parameters of its own; not packed")
        if len({type(mod) for mod in models}) != 1:
            raise NotPackable("the members' models are of different classes")
        if len({id(mod) for mod in models}) not in (1, len(models)):
            raise NotPackable("a pack holds distinct models, or one model several times (an ensemble), not a mix")
        # the forward code and parameter-free modules; the parametric leaves are replaced, so their tensors are
        # shared with member 0 in the copy rather than copied (the memo maps each to itself)
        memo: dict[int, object] = {id(t): t for t in [*top.parameters(), *top.buffers()]}
        body = copy.deepcopy(top, memo)
        _pack_children(body, models, rngs, "")
        self.body = body
        object.__setattr__(self, "members", tuple(models))

    def train(self, mode: bool = True) -> PackedModel:
        super().train(mode)
        for member in self.members:  # quantizers read their own module's training flag
            member.train(mode)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """TF32 off for convolutions and matrix products while it lasts. cuDNN convolves float32 in TF32 by default,
    and a grouped convolution rounds differently from a member's own (the first GPU run: 1.2e-3 relative, above the
    check's 1e-3 under channels_last): the check must see the model's structure, not a conv algorithm's rounding."""
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


@torch.no_grad()
def check_per_member(packed: PackedModel, in_shape: Sequence[int], rngs: Sequence[MemberRng | None],
                     device: torch.device, batch: int = 3, rtol: float = 1e-3) -> None:
    """Refuse a model whose forward is not per sample: the packed forward (evaluation mode) must give each
    member's own forward on a random input. Random states are left as they were (every member's included)."""
    was = packed.training
    packed.eval()
    dtype = torch.get_default_dtype()
    saved = [(r.cpu_state, r.cuda_state) if r is not None else None for r in rngs]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _full_fp32():
            xs = [torch.randn(batch, *in_shape, device=device, dtype=dtype) for _ in packed.members]
            out = packed(torch.cat(xs)).float().view(len(xs), batch, -1)
            for i, (model, x, rng) in enumerate(zip(packed.members, xs, rngs, strict=True)):
                if rng is not None:  # the same draws as in the packed forward
                    rng.cpu_state, rng.cuda_state = saved[i]
                with _in_rng(rng):
                    solo = model(x).float().view(batch, -1)
                # a relative L2 distance, not an elementwise one: in a large binary network a rounding difference
                # may flip one activation's sign near zero, which moves a few outputs a little; a forward that
                # mixes the batch moves them all
                dist = float((out[i] - solo).norm() / solo.norm().clamp_min(1e-12))
                if not dist <= rtol:
                    raise NotPackable(f"the model's forward is not per sample: packed member {i}'s output is "
                                      f"{dist:.3g} (relative L2) away from its own forward")
    finally:
        for r, s in zip(rngs, saved, strict=True):
            if r is not None:
                r.cpu_state, r.cuda_state = s
        packed.train(was)
