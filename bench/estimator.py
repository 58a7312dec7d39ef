"""The estimator plugin contract.

An *estimator* is a binarization method: how a real tensor x becomes a binary one in the forward pass and
which surrogate gradient flows back. One estimator object is created per run from its hyperparameters; every
binary layer asks it for a :class:`Quantizer`, a small ``nn.Module`` that holds the per-layer state the
estimator needs (learnable parameters such as a learnable range or a low-rank factor, buffers) so that this
state lives in the model: the optimizer sees it, checkpoints save it, ``.to(device)`` moves it.

What an estimator can do, each by overriding one method (all optional but :meth:`Estimator.quantize`):

* ``quantize(x, q)``       forward values and surrogate gradient (the one required method);
* ``init_state(q, shape)`` create per-layer state on the quantizer ``q``;
* ``latent(w, q)``         the real value that gets binarized (sin(w0 w) for a periodic binarizer; w for most);
* ``set_progress(p)``      training progress (stage, epoch fraction) for schedules;
* ``extra_loss(qs)``       a loss term added to the task loss;
* ``stages()``             training stages (e.g. real sine weights, then the square wave);
* ``init_latent_(w, q)``   re-initialise (or read) the layer's latent weight once, after the model's own init;
* ``constrain_(w, q)``     an in-place projection of the latent weights after each optimizer step;
* ``eval_modes``/``predict`` how evaluation runs (e.g. an ensemble of sampled networks);
* ``layer_diagnostics``    extra per-layer diagnostics (e.g. a fitting error).

What the core reads from an estimator to plan, label and report its runs is declared on the class too
(``role``, ``reference``, ``common_activation``, ``published``, ``published_name``, ``step_cost_target``,
``eval_cost``, ``setting_label``, ``report_figures``): the core never names an estimator.

Hyperparameters are the keyword arguments of ``__init__`` with their defaults; ``estimator_info`` reads them
from the signature, so there is one place to declare them.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from bench.errors import ConfigError, did_you_mean, example_of, type_words
from bench.registry import Registry
from bench.words import BOOL_WORDS, COMMON_ACTIVATION, parse_bool  # noqa: F401 - re-exported (bench/words.py)

KINDS = ("weight", "activation")


@dataclass(frozen=True)
class Progress:
    """Where training is: stage index and name, epoch within the stage, and e/E in [0, 1]."""

    stage: int = 0
    stage_name: str = "main"
    epoch: int = 0
    epochs: int = 1

    @property
    def fraction(self) -> float:
        return self.epoch / self.epochs if self.epochs > 0 else 0.0

    @classmethod
    def at(cls, fraction: float, stage: int = 0, stage_name: str = "main", resolution: int = 10_000) -> Progress:
        """A progress point at a given fraction (for probes and plots)."""
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"progress must lie in [0, 1], got {fraction}")
        return cls(stage, stage_name, round(fraction * resolution), resolution)


@dataclass(frozen=True)
class Stage:
    """One training stage as the estimator declares it; the recipe gives its optimizer settings.

    ``fraction`` is its share of the run's epochs; ``overrides`` are hyperparameters of the estimator that
    change in this stage (a loss weight, say).
    """

    name: str = "main"
    fraction: float = 1.0
    overrides: Mapping[str, Any] = field(default_factory=dict)


class Quantizer(nn.Module):
    """Per-layer binarizer: ``forward(x)`` delegates to the estimator, which keeps its state here."""

    def __init__(self, estimator: Estimator, kind: str, shape: tuple[int, ...] | None, internal_scale: bool):
        super().__init__()
        if kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.shape = tuple(shape) if shape is not None else None
        self.internal_scale = internal_scale
        object.__setattr__(self, "estimator", estimator)  # plain attribute: not a submodule, not saved
        estimator.init_state(self, self.shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.estimator.quantize(x, self)

    def extra_repr(self) -> str:
        return f"{self.estimator.name}, kind={self.kind}"


class Estimator:
    """Base class of all estimators. Subclass it, implement :meth:`quantize`, register it by name."""

    name: ClassVar[str] = "?"
    #: what it can binarize
    kinds: ClassVar[tuple[str, ...]] = KINDS
    #: weight scaling its paper/code uses: "none", "mean", "alpha" (applied by the layer) or "internal"
    native_scaling: ClassVar[str] = "none"
    #: activation estimator of its own recipe at W1A1: a registered name, None for the estimator itself, or
    #: ``COMMON_ACTIVATION`` for the common recipe's (the estimator declaring ``common_activation``)
    native_activation: ClassVar[str | None] = COMMON_ACTIVATION
    #: hyperparameters for the activation estimator in its own recipe
    native_activation_hparams: ClassVar[dict[str, Any]] = {}
    #: evaluation modes; the first is the headline one
    eval_modes: ClassVar[tuple[str, ...]] = ("default",)
    #: the evaluation mode whose network ``binbench export`` writes as the one deployable binary network; None: the
    #: headline mode. A stochastic estimator names a deterministic one (the mean network of a distribution)
    export_mode: ClassVar[str | None] = None
    #: True when ``constrain_`` must run after every optimizer step
    has_constraint: ClassVar[bool] = False
    #: True when the estimator draws random numbers in its forward pass
    stochastic: ClassVar[bool] = False
    #: "method" (a binarization method), or "control" (a reference that is not a method, such as ``frozen``:
    #: listed, tabulated and drawn as a control, never ranked among the methods)
    role: ClassVar[str] = "method"
    #: how tables and figures name it ("Clipped STE (BNN)"); set at registration to the registered name where a
    #: class does not declare its own, so a plugin needs nothing to appear in a report
    display_name: ClassVar[str] = ""
    #: the method's own training recipe as its paper/code gives it: a list of ``bench.recipes.Rule``, each naming
    #: its source (file and line, or paper section and table) and whether its values are extrapolated;
    #: None = no published recipe (``--recipe published`` then runs the common recipe, and says so)
    published: ClassVar[list[Any] | None] = None
    #: its name in the published-results table (``bench/reference/published.csv``) where that differs from the
    #: registered name; None: the registered name
    published_name: ClassVar[str | None] = None
    #: the one estimator every other is measured against: the reports' paired differences and discrimination
    #: probe (it must beat the control for a cell to tell trained binary weights from untrained ones),
    #: ``binbench benchmark``'s step-time ratios, ``binbench run`` without ``-e`` and a suite's full-precision
    #: cells. Exactly one registered estimator declares it.
    reference: ClassVar[bool] = False
    #: the activation estimator of the common recipe (and of methods whose ``native_activation`` is
    #: ``COMMON_ACTIVATION``). Exactly one registered estimator declares it.
    common_activation: ClassVar[bool] = False
    #: the step-time ratio to the reference estimator that ``binbench benchmark`` holds this estimator to
    step_cost_target: ClassVar[float] = 1.15

    def __init__(self) -> None:
        self.progress = Progress()
        self.eval_mode = self.eval_modes[0]

    # -- what reports and planning read --------------------------------------------------------------
    @classmethod
    def eval_cost(cls, hparams: Mapping[str, Any]) -> int:
        """Forward passes per test image in one epoch's evaluation, every evaluation mode together (an
        ensemble of L sampled networks costs L): what a suite's cost estimate multiplies the test set by."""
        return len(cls.eval_modes)

    @classmethod
    def setting_label(cls, hparams: Mapping[str, Any]) -> str:
        """How a table labels the setting its rows ran with, where a reader needs it to compare them with the
        paper (an ensemble size: "L=40, K=4"): beside the row's evaluation mode and in the table header; ""
        for none."""
        return ""

    @classmethod
    def report_figures(cls, runs: Any) -> dict[str, Any]:
        """Figures of the method's own for a suite report: ``{file stem: matplotlib figure}`` drawn from
        ``runs`` (a pandas DataFrame, one row per counted trial of this estimator, with its final metrics, the
        ``diag/*`` diagnostics and an ``hparams`` column of its hyperparameters as a dict). Default: none."""
        return {}

    # -- hyperparameters --------------------------------------------------------------------------
    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        sig = inspect.signature(cls.__init__)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }

    @classmethod
    def hparam_types(cls) -> dict[str, str]:
        """The declared type of each hyperparameter as written in ``__init__``'s signature ("float | None"), "" where
        none is declared: what a value is checked against when the default (None) does not tell."""
        sig = inspect.signature(cls.__init__)
        return {p.name: ("" if p.annotation is p.empty else getattr(p.annotation, "__name__", str(p.annotation)))
                for p in sig.parameters.values()
                if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    @property
    def hparams(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.hparam_defaults()}

    def set_hparams(self, **values: Any) -> None:
        """Change hyperparameters mid-run (stage overrides); unknown names are errors."""
        values = coerce_hparams(type(self), values)
        for k, v in values.items():
            setattr(self, k, v)

    # -- the contract -------------------------------------------------------------------------------
    def quantizer(self, kind: str, shape: tuple[int, ...] | None = None, internal_scale: bool = False) -> Quantizer:
        if kind not in self.kinds:
            raise ConfigError(f"estimator {self.name!r} cannot binarize {kind}s (it handles: {', '.join(self.kinds)})")
        return Quantizer(self, kind, shape, internal_scale)

    def init_state(self, q: Quantizer, shape: tuple[int, ...] | None) -> None:
        """Create per-layer parameters/buffers on ``q`` (``q.register_parameter``...).

        ``shape`` is what the layer knows at construction: for a weight quantizer the weight's shape
        (out, in, kh, kw) or (out, in); for an activation quantizer ``(channels,)``, the layer's input channel
        count (conv ``in_channels``, linear ``in_features``), so per-channel activation state (a learnable
        threshold per channel) is made here with its final size; ``None`` for a quantizer built outside a layer.
        Create parameters here, not lazily in ``quantize``: the optimizer is built from the model's parameters
        before the first batch (a lazy ``nn.UninitializedParameter`` is materialised by one forward pass first).
        """

    def quantize(self, x: Tensor, q: Quantizer) -> Tensor:
        raise NotImplementedError

    def latent(self, w: Tensor, q: Quantizer | None = None) -> Tensor:
        """The real value the estimator binarizes (w_hat: the quantization error is measured on it)."""
        return w

    def set_progress(self, progress: Progress) -> None:
        self.progress = progress

    def extra_loss(self, quantizers: list[Quantizer]) -> Tensor | None:
        return None

    def stages(self) -> list[Stage]:
        return [Stage()]

    def begin_stage(self, index: int, stage: Stage) -> None:
        if stage.overrides:
            self.set_hparams(**stage.overrides)

    def init_latent_(self, w: Tensor, q: Quantizer) -> None:
        """Called once per binary layer, under no_grad, after the whole model is built and initialised
        (``bench.layers.init_latents_``, from ``create_model``): ``w`` is the weight the optimizer will train.
        May re-initialise it in place (a xavier init of its own) or read its statistics into ``q`` (a clipping
        range). Not called for a checkpoint's weights: state derived here is saved with the model."""

    def constrain_(self, w: Tensor, q: Quantizer) -> None:
        """Project latent weights in place (under no_grad) after an optimizer step."""

    def predict(self, model: nn.Module, x: Tensor, mode: str) -> Tensor:
        """Logits of ``model`` on ``x`` in evaluation ``mode``."""
        return model(x)

    def layer_diagnostics(self, w: Tensor, q: Quantizer) -> dict[str, float]:
        """Extra per-layer diagnostics; ``w`` is the latent weight parameter (its ``.grad`` is the last step's)."""
        return {}

    def saturated(self, w: Tensor, q: Quantizer) -> Tensor | None:
        """Boolean mask of latent weights outside the gradient support; None: measured by autograd."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


# -- registry -----------------------------------------------------------------------------------------
ESTIMATORS: Registry[type[Estimator]] = Registry("estimator", ("estimators",), "binbench.estimators")


def register_estimator(name: str):
    """Class decorator: ``@register_estimator("my_sign")``."""

    def decorator(cls: type[Estimator]) -> type[Estimator]:
        if not (isinstance(cls, type) and issubclass(cls, Estimator)):
            raise ConfigError(f"@register_estimator({name!r}) must decorate a subclass of bench.Estimator")
        ESTIMATORS.add(name, cls)
        cls.name = name
        if not cls.__dict__.get("display_name"):  # declared on this class, not inherited from a registered one
            cls.display_name = name
        return cls

    return decorator


def list_estimators(pattern: str = "*") -> list[str]:
    """Names of the registered estimators matching a wildcard pattern."""
    return ESTIMATORS.names(pattern)


def get_estimator_class(name: str) -> type[Estimator]:
    return ESTIMATORS.get(name)


def coerce_hparams(cls: type[Estimator], values: Mapping[str, Any]) -> dict[str, Any]:
    """Check names against the signature and convert values to the defaults' types."""
    defaults = cls.hparam_defaults()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in defaults:
            valid = ", ".join(defaults) or "none"
            raise ConfigError(
                f"unknown hyperparameter {key!r} for estimator {cls.name!r}{did_you_mean(key, defaults)}; "
                f"valid: {valid}"
            )
        default = defaults[key]
        if default is None:  # the declared type says what it takes ("float | None": a number, or none)
            default = example_of(cls.hparam_types().get(key, ""))
        out[key] = _coerce(cls.name, key, value, default)
    return out


def _coerce(est: str, key: str, value: Any, default: Any) -> Any:
    if default is None or value is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                return parse_bool(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            v = float(value)
            if math.isnan(v):
                raise ValueError
            return v
        if isinstance(default, str):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"hyperparameter {key!r} of estimator {est!r} must be {type_words(type(default).__name__)}, got {value!r}"
        ) from None
    return value


def create_estimator(name: str, **hparams: Any) -> Estimator:
    """An estimator instance by name, hyperparameters checked and converted."""
    cls = get_estimator_class(name)
    return cls(**coerce_hparams(cls, hparams))


def _declaring(flag: str, what: str) -> str:
    names = [n for n in ESTIMATORS.names() if getattr(ESTIMATORS.get(n), flag, False) is True]
    if len(names) != 1:
        found = ", ".join(names) or "none"
        raise ConfigError(f"exactly one registered estimator must declare {flag} = True ({what}); found: {found}: "
                          "remove the declaration from the plugin that added it")
    return names[0]


def reference_estimator() -> str:
    """The registered name of the reference estimator (see ``Estimator.reference``)."""
    return _declaring("reference", "the estimator others are measured against")


def common_activation_estimator() -> str:
    """The registered name of the common recipe's activation estimator (see ``Estimator.common_activation``)."""
    return _declaring("common_activation", "the common recipe's activation estimator")


def native_activation_of(name: str) -> str:
    """The activation estimator of ``name``'s own recipe, as a registered name."""
    act = get_estimator_class(name).native_activation
    return name if act is None else common_activation_estimator() if act == COMMON_ACTIVATION else act


def estimator_info(name: str) -> dict[str, Any]:
    """Docstring, hyperparameters with defaults, capabilities and source of an estimator (its recipes:
    ``bench.recipes.recipe_table``)."""
    entry = ESTIMATORS.entry(name)
    cls = entry.obj
    try:
        file = inspect.getsourcefile(cls)
    except TypeError:
        file = None
    return {
        "name": name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "doc": inspect.cleandoc(cls.__doc__ or ""),
        "hparams": cls.hparam_defaults(),
        "kinds": cls.kinds,
        "native_scaling": cls.native_scaling,
        "native_activation": native_activation_of(name),
        "eval_modes": cls.eval_modes,
        "role": cls.role,
        "stages": [s.name for s in cls().stages()],
        "source": entry.source,
        "file": file,
    }


def estimator_quantizers(model: nn.Module, kind: str | None = None) -> list[Quantizer]:
    """All quantizers in a model (optionally of one kind), in module order."""
    return [m for m in model.modules() if isinstance(m, Quantizer) and (kind is None or m.kind == kind)]


def as_tensor_points(x: Iterable[float] | Tensor) -> Tensor:
    return x.detach().clone().float() if isinstance(x, Tensor) else torch.tensor(list(x), dtype=torch.float32)
