from __future__ import annotations

import torch
from torch import Tensor, nn

from bench import Estimator, register_estimator
from bench.errors import ConfigError
from bench.functional import sign

RANGE_INIT = ("minmax", "fixed")
GRAD_SCALE = ("sqrt", "none")


class _DsqSign(torch.autograd.Function):
    r"""DSQ at 1 bit in one Function (Gong et al., ICCV 2019, eqs. 3-5, symmetric range l = -u, one interval).

    With alpha in [1e-3, 0.999] (clamped), u = |u_raw| + 1e-8, s = 1/(1 - alpha), c = ln(2/alpha - 1)/2, k = c/u,
    th = tanh(k x), sech2 = 1 - th^2 and the indicator i = 1{|x| <= u}:
        Forward:   y = |u_raw| sign(x)                        (the hard quantizer)
        Backward:  dL/dx     = g i s c sech2                  (the soft quantizer Q_S(x) = u s tanh(k x) on |x| <= u,
                                                               u sign(x) outside)
                   dL/dalpha = grad_scale 1{1e-3 <= alpha_raw <= 0.999} sum(g i u (s^2 th + s sech2 x dk/dalpha)),
                               dk/dalpha = -1/(u alpha (2 - alpha))
                   dL/du_raw = grad_scale sign(u_raw) sum(g (i s (th - k x sech2) + (1 - i) sign(x)))
    The two scalar gradients are sums over every element of a per-element combination of g i th and
    g i x sech2 = (dL/dx) x / (s c), built from the tensors the dL/dx pass already holds (and sign(x), kept from the
    forward), in fused multiply-adds: no selects, no second sign, no recomputed tanh.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, u: Tensor, grad_scale: float) -> Tensor:  # type: ignore[override]
        sx = sign(x)
        ctx.save_for_backward(x, alpha, u, sx)
        ctx.grad_scale = grad_scale
        return u.abs() * sx

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, alpha_raw, u_raw, sx = ctx.saved_tensors
        alpha = alpha_raw.clamp(1e-3, 0.999)
        u = u_raw.abs() + 1e-8
        s = 1.0 / (1.0 - alpha)
        c = torch.log(2.0 / alpha - 1.0) / 2
        k = c / u
        inside = (x.abs() <= u).to(g.dtype)
        th = torch.tanh(k * x)
        sech2 = th * th
        sech2.neg_().add_(1.0)  # 1 - th^2 (bit-identical to the subtraction)
        gi = g * inside
        grad_x = gi * (s * c * sech2)
        grad_alpha = grad_u = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # per element g i th and g i x sech2 = (dL/dx) x / (s c), from the tensors in hand; each scalar gradient
            # is the sum of its per-element combination (summing the terms separately would cancel badly)
            gith = gi * th
            gx = grad_x * x
            if ctx.needs_input_grad[1]:
                ds = s * s
                dk = -1.0 / (u * alpha * (2.0 - alpha))
                in_range = ((alpha_raw >= 1e-3) & (alpha_raw <= 0.999)).to(g.dtype)  # clamp: no gradient outside
                term = torch.addcmul(gith * ds, gx, dk / c)
                grad_alpha = u * term.sum() * in_range * ctx.grad_scale
            if ctx.needs_input_grad[2]:
                # dQ/du = s (th - k x sech2) inside, sign(x) outside (g - g i is g outside the range, 0 inside)
                term = torch.addcmul(gith * s, gx, -k / c).addcmul_(g - gi, sx)
                grad_u = term.sum() * torch.sign(u_raw) * ctx.grad_scale
        return grad_x, grad_alpha, grad_u, None


def _range_ready(q) -> bool:
    """Whether the quantizer's range is set, from a Python mirror of its ``range_ready`` buffer: a training step never
    reads the buffer (``bool`` of a device tensor is a host sync). The buffer changes in two places only: the first
    training batch, which sets the mirror too, and ``load_state_dict`` (a checkpoint, a stage's hand-off, a replayed
    epoch), after which :func:`_reread_range_ready` reads it once, outside any step."""
    return q.__dict__["_range_ready"]


def _reread_range_ready(q, incompatible_keys) -> None:
    """``load_state_dict``'s post hook: the mirror follows the loaded buffer (one host read, at load time)."""
    q.__dict__["_range_ready"] = bool(q.range_ready)


@register_estimator("dsq")
class DsqSign(Estimator):
    r"""Differentiable Soft Quantization at 1 bit (Gong et al., ICCV 2019, arXiv 1908.05033).

    Clipping range :math:`[l, u] = [-u, u]`, one interval: :math:`\Delta = u - l`, :math:`m = (l + u)/2 = 0`.

    Forward (hard):

    .. math::

        x_b = l + \Delta \frac{\operatorname{sign}(x - m) + 1}{2} = u \operatorname{sign}(x)

    Backward (soft), through the soft quantizer :math:`Q_S` on :math:`[l, u]` (and through :math:`\alpha` and
    :math:`u` when they are learnable):

    .. math::

        Q_S(x) = l + \Delta \frac{\varphi(x) + 1}{2}, \quad \varphi(x) = s \tanh(k (x - m)), \quad
        k = \frac{\ln(2/\alpha - 1)}{\Delta}, \quad s = \frac{1}{1 - \alpha}

        \frac{\partial L}{\partial x} = \frac{\partial L}{\partial x_b} \begin{cases}
        \frac{\Delta}{2} s k (1 - \tanh^2(k (x - m))) & \text{if } |x| \le u \\
        0 & \text{otherwise} \end{cases}

    The surrogate's peak (at x = 0) is s c with :math:`c = \ln(2/\alpha - 1)/2`; at the range's edge |x| = u it is
    :math:`\operatorname{sech}^2(c)` of the peak (0.36 at alpha = 0.2): the curve bends only if the range sits where
    the values live.

    Paper: https://openaccess.thecvf.com/content_ICCV_2019/html/Gong_Differentiable_Soft_Quantization_Bridging_Full-Precision_and_Low-Bit_Neural_Networks_ICCV_2019_paper.html
    (arXiv: https://arxiv.org/abs/1908.05033).
    Code: no official release; the third-party implementations binbench follows are
    https://github.com/ModelTC/MQBench (``mqbench/fake_quantize/dsq.py``, from the authors' institution) and
    https://github.com/ricky40403/DSQ (``DSQConv.py``).

    The range. With u = 1 fixed and kaiming-scale weights (|W| ~ 0.02-0.1) the tanh is flat over the whole weight
    range and "DSQ" is an STE scaled by ~1.37. So by default (``range_init="minmax"``) u starts at the tensor's own
    max |x| (the symmetric form of the min/max statistics of the unofficial ricky40403/DSQ; MQBench uses an
    observer instead): for weights, the layer's initial weights; for activations, the first training batch.
    ``range_init="fixed"`` keeps u as given.

    Hyperparameters:
        alpha (float, default 0.2): characteristic variable in (0, 1); 0.2 is the unofficial ricky40403/DSQ
            initialisation, MQBench keeps it fixed at 0.4 (there is no official code).
        learnable_alpha (bool, default True): alpha is a per-layer parameter (clamped to [1e-3, 0.999]).
        range_init (str, default "minmax"): ``minmax`` (u = max |x| of the tensor, see above) or ``fixed``.
        u (float, default 1.0): the upper clipping bound (l = -u) when ``range_init="fixed"``.
        learnable_bounds (bool, default True): u is a per-layer parameter; the forward levels are +-u.
        grad_scale (str, default "sqrt"): the gradients of the per-layer scalars alpha and u are sums over all N
            elements of the tensor; ``sqrt`` divides them by sqrt(N) (the rule of LSQ, Esser et al., ICLR 2020:
            DSQ gives none, and unscaled they drive the last layer's u and alpha out of range within an epoch
            at lr 0.1), ``none`` keeps the raw sums.
    At the bounds. alpha is clamped to [1e-3, 0.999] in the forward, and at exactly alpha = 1e-3 or 0.999 binbench
    still passes alpha its gradient (the interval is closed), as ``torch.clamp`` did in the PyTorch of DSQ's era
    (2019); current PyTorch's clamp passes none at a float bound. Likewise ``|x| <= u`` counts a value exactly at
    the range's edge as inside. Both sets have measure zero in training.
    The hard forward with the soft backward follows MQBench and ricky40403 (the paper converts to the hard
    quantizer after training; both third-party codes run it hard forward, soft backward).
    """

    display_name = "DSQ"

    native_activation = None  # DSQ quantizes weights and activations
    published = None  # no official code and no CIFAR recipe (DSQ, ICCV 2019): --recipe published runs the common one

    def __init__(self, alpha: float = 0.2, learnable_alpha: bool = True, range_init: str = "minmax", u: float = 1.0,
                 learnable_bounds: bool = True, grad_scale: str = "sqrt"):
        super().__init__()
        if range_init not in RANGE_INIT:
            raise ConfigError(f"dsq: range_init must be one of {', '.join(RANGE_INIT)}, got {range_init!r}")
        if grad_scale not in GRAD_SCALE:
            raise ConfigError(f"dsq: grad_scale must be one of {', '.join(GRAD_SCALE)}, got {grad_scale!r}")
        if not 0.0 < alpha < 1.0 or u <= 0:
            raise ConfigError(f"dsq needs 0 < alpha < 1 and u > 0 (got alpha={alpha}, u={u})")
        self.alpha, self.learnable_alpha, self.range_init = alpha, learnable_alpha, range_init
        self.u, self.learnable_bounds, self.grad_scale = u, learnable_bounds, grad_scale

    def init_state(self, q, shape) -> None:
        a = torch.tensor(float(self.alpha))
        q.register_parameter("alpha", nn.Parameter(a)) if self.learnable_alpha else q.register_buffer("alpha", a)
        u = torch.tensor(float(self.u))
        q.register_parameter("u", nn.Parameter(u)) if self.learnable_bounds else q.register_buffer("u", u)
        # activations learn their range from the first training batch; weights at construction (init_latent_)
        ready = self.range_init == "fixed" or q.kind == "weight"
        q.register_buffer("range_ready", torch.tensor(ready))
        q.__dict__["_range_ready"] = ready  # the buffer's value on the host (see _range_ready)
        q.register_load_state_dict_post_hook(_reread_range_ready)

    def init_latent_(self, w: Tensor, q) -> None:
        if self.range_init == "minmax":
            q.u.copy_(w.detach().abs().max().clamp_min(1e-8))

    def quantize(self, x: Tensor, q) -> Tensor:
        if q.training and not _range_ready(q):
            with torch.no_grad():
                q.u.copy_(x.detach().abs().max().clamp_min(1e-8))
                q.range_ready.fill_(True)
            q.__dict__["_range_ready"] = True
        n = x.numel() if q.kind == "weight" or x.dim() < 2 else x[0].numel()  # activations: per image, as LSQ
        scale = n**-0.5 if self.grad_scale == "sqrt" else 1.0
        return _DsqSign.apply(x, q.alpha, q.u, scale)
