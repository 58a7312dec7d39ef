"""The estimator plugin contract.

An *estimator* is a binarization method: how a real tensor x becomes a binary one in the forward pass and
which surrogate gradient flows back. One estimator object is created per run from its hyperparameters; every
binary layer asks it for a :class:`Quantizer`, a small ``nn.Module`` that holds the per-layer state the
estimator needs (learnable parameters such as a learnable range or a low-rank factor, buffers) so that this
state lives in the model: the optimizer sees it, checkpoints save it, ``.to(device)`` moves it.

What an estimator can do, each by overriding one method of :class:`Estimator` (all optional but ``quantize``;
each method's docstring says its arguments, what it returns, when the loop calls it and what the default does):

* ``quantize(x, q)``        forward values and surrogate gradient (the one required method);
* ``init_state(q, shape)``  create per-layer state on the quantizer ``q``;
* ``init_latent_(w, q)``    re-initialise (or read) the layer's latent weight once, after the model's own init;
* ``stages()``, ``begin_stage(i, stage)``  training stages (e.g. real sine weights, then the square wave);
* ``set_progress(p)``       training progress (stage, epoch fraction) for schedules, every epoch;
* ``extra_loss(qs)``        a loss term added to the task loss, every step;
* ``constrain_(w, q)``      an in-place projection of the latent weights after each optimizer step;
* ``predict(model, x)``     the logits in the current ``eval_mode`` (e.g. an ensemble of sampled networks);
* ``latent(w, q)``          the real value that gets binarized (sin(w0 w) for a periodic binarizer; w for most);
* ``layer_diagnostics``, ``saturated``  per-layer diagnostics, every epoch.

What the core reads from an estimator to plan, label and report its runs is declared on the class, in one section
of :class:`Estimator` ("declarative metadata": ``role``, ``kinds``, ``stochastic``, ``eval_modes``,
``export_mode``, ``published``, ``reference``, ...; ``Estimator.metadata()`` returns them as one immutable
:class:`EstimatorMetadata`), with the classmethods ``eval_cost``, ``setting_label`` and ``report_figures``: the
core never names an estimator.

Hyperparameters are the keyword arguments of ``__init__`` with their defaults; ``estimator_info`` reads them
from the signature, so there is one place to declare them.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
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


@dataclass(frozen=True)
class EstimatorMetadata:
    """Everything an estimator class declares about itself, as one read-only value (``cls.metadata()``).

    The fields are the class attributes of the "declarative metadata" section of :class:`Estimator`, where each is
    documented and given its default; a plugin declares them as class attributes. The core plans, labels and
    reports runs from them; no training step reads them.
    """

    name: str
    display_name: str
    role: str
    kinds: tuple[str, ...]
    stochastic: bool
    sample_wise: bool
    eval_modes: tuple[str, ...]
    export_mode: str | None
    native_scaling: str
    native_activation: str | None
    native_activation_hparams: Mapping[str, Any]
    published: tuple[Any, ...] | None
    published_name: str | None
    reference: bool
    common_activation: bool
    step_cost_target: float


class Estimator:
    """Base class of all estimators. Subclass it, implement :meth:`quantize`, register it by name.

    A run creates one instance per estimator it uses (the weight estimator and, at binary activations, the
    activation estimator; one instance does both where they are the same estimator with the same hyperparameters).
    Every binary layer asks it for :class:`Quantizer` modules that hold the per-layer state. The training loop
    (``bench.train``; a pack, ``bench.pack.train``, calls the same hooks per member) calls the hooks in this order:

    1. ``__init__(**hparams)``, then :meth:`quantizer` (and so :meth:`init_state`) once per binary weight and input,
       as the model is built; :meth:`init_latent_` once per binary layer after the model's own initialisation;
       :meth:`constrain_` once on every binary weight where :attr:`has_constraint`.
    2. For every stage of :meth:`stages`: :meth:`begin_stage`; for every epoch: :meth:`set_progress`; for every
       step: :meth:`quantize` in the forward of every binary layer, :meth:`extra_loss` (weight estimator only),
       backward, the optimizer's step, :meth:`constrain_` where :attr:`has_constraint`.
    3. After every epoch: evaluation in each mode of :attr:`eval_modes`, inside :meth:`evaluating`, through
       :meth:`predict`; then the diagnostics (:meth:`latent`, :meth:`saturated`, :meth:`layer_diagnostics`).

    Nothing called inside a training step (:meth:`quantize`, the autograd Functions it applies, :meth:`extra_loss`,
    :meth:`constrain_`) may read a device tensor on the host (``.item()``, ``float(t)``, ``if t:``, ``.cpu()``,
    ``torch.nonzero``, boolean-mask indexing): on a GPU each read stalls the step (``tests/test_host_sync.py``).
    Hooks called once per epoch or outside training may.

    Hyperparameters are the keyword arguments of ``__init__`` with their defaults (:meth:`hparam_defaults`), each
    kept as an attribute of the same name.
    """

    # == declarative metadata ======================================================================================
    # What the core reads to plan, label and report runs, declared as class attributes (the fields of
    # EstimatorMetadata; ``metadata()`` returns them as one value), and the classmethods that derive reporting values
    # from hyperparameters. None of them is read inside a training step.

    name: ClassVar[str] = "?"
    """The registered name (set by :func:`register_estimator`; a class does not declare it)."""

    display_name: ClassVar[str] = ""
    """How tables and figures name it (the paper's spelling, "IR-Net"); set at registration to the registered name
    where the class declares none, so a plugin needs nothing to appear in a report."""

    role: ClassVar[str] = "method"
    """``"method"`` (a binarization method) or ``"control"`` (a reference that is not a method, such as a sign fixed
    at initialisation: listed, tabulated and drawn as a control, never ranked among the methods)."""

    kinds: ClassVar[tuple[str, ...]] = KINDS
    """What it can binarize: ``"weight"``, ``"activation"`` or both. :meth:`quantizer` refuses any other kind."""

    stochastic: ClassVar[bool] = False
    """True when :meth:`quantize` draws random numbers (from the global generator): a pack then gives each member
    its own random stream around the member's forward and :meth:`extra_loss`, and an export needs
    :attr:`export_mode`."""

    sample_wise: ClassVar[bool] = False
    """True when :meth:`quantize` of an activation treats each sample of the batch on its own, as a function of the
    sample, its hyperparameters and its progress only: no statistics over the batch, no random draws, no state in
    the quantizer (no parameters or buffers). A pack then binarizes the inputs of members whose activation
    estimators are of this class with equal attributes in one call over their stacked batches (the same numbers
    and gradients as one call per member, at a fraction of the cost). The default (False) is always correct."""

    eval_modes: ClassVar[tuple[str, ...]] = ("default",)
    """The evaluation modes, the first being the headline one. Every epoch is evaluated in each (a run's config may
    pick a subset); :attr:`eval_mode` says which one is running."""

    export_mode: ClassVar[str | None] = None
    """The evaluation mode whose network ``binbench export`` writes as the one deployable binary network; None:
    the headline mode. A stochastic estimator names a deterministic one (the mean network of a distribution)."""

    native_scaling: ClassVar[str] = "none"
    """The weight scaling its paper/code uses, for ``--recipe published``: ``"none"``, ``"mean"``, ``"alpha"``
    (applied by the layer) or ``"internal"`` (applied in :meth:`quantize` when ``q.internal_scale``)."""

    native_activation: ClassVar[str | None] = COMMON_ACTIVATION
    """The activation estimator of its own recipe at binary activations: a registered name, None for the estimator
    itself, or ``COMMON_ACTIVATION`` for the common recipe's (the one declaring :attr:`common_activation`)."""

    native_activation_hparams: ClassVar[dict[str, Any]] = {}
    """Hyperparameters of that activation estimator in its own recipe."""

    published: ClassVar[list[Any] | None] = None
    """The method's own training recipe as its paper/code gives it: a list of ``bench.recipes.Rule``, each naming its
    source (file and line, or paper section and table) and whether its values are extrapolated; None: no published
    recipe (``--recipe published`` then runs the common recipe, and says so)."""

    published_name: ClassVar[str | None] = None
    """Its name in the published-results table (``bench/reference/published.csv``) where that differs from the
    registered name; None: the registered name."""

    reference: ClassVar[bool] = False
    """True for the one estimator every other is measured against: the reports' paired differences and
    discrimination probe (it must beat the control for a cell to tell trained binary weights from untrained ones),
    ``binbench benchmark``'s step-time ratios, ``binbench run`` without ``-e`` and a suite's full-precision cells.
    Exactly one registered estimator declares it."""

    common_activation: ClassVar[bool] = False
    """True for the activation estimator of the common recipe (and of methods whose :attr:`native_activation` is
    ``COMMON_ACTIVATION``). Exactly one registered estimator declares it."""

    step_cost_target: ClassVar[float] = 1.15
    """The step-time ratio to the reference estimator that ``binbench benchmark`` holds this estimator to."""

    @classmethod
    def metadata(cls) -> EstimatorMetadata:
        """The declared metadata above as one immutable value (its lists as tuples)."""
        values = {f.name: getattr(cls, f.name) for f in fields(EstimatorMetadata)}
        values["kinds"], values["eval_modes"] = tuple(cls.kinds), tuple(cls.eval_modes)
        values["published"] = tuple(cls.published) if cls.published is not None else None
        values["native_activation_hparams"] = MappingProxyType(dict(cls.native_activation_hparams))
        return EstimatorMetadata(**values)

    @classmethod
    def eval_cost(cls, hparams: Mapping[str, Any]) -> int:
        """Forward passes per test image in one epoch's evaluation, every evaluation mode together (an
        ensemble of L sampled networks costs L): what a suite's cost estimate multiplies the test set by.

        Args:
            hparams: the run's hyperparameters of this estimator (only those set; the defaults fill the rest).
        Returns:
            The count; the default is one per evaluation mode.
        """
        return len(cls.eval_modes)

    @classmethod
    def setting_label(cls, hparams: Mapping[str, Any]) -> str:
        """How a table labels the setting its rows ran with, where a reader needs it to compare them with the
        paper (an ensemble size: "L=40, K=4"): beside the row's evaluation mode and in the table header.

        Args:
            hparams: the run's hyperparameters of this estimator (only those set).
        Returns:
            The label; the default is "" (none).
        """
        return ""

    @classmethod
    def report_figures(cls, runs: Any) -> dict[str, Any]:
        """Figures of the method's own for a suite report.

        Args:
            runs: a pandas DataFrame, one row per counted trial of this estimator, with its final metrics, the
                ``diag/*`` diagnostics and an ``hparams`` column of its hyperparameters as a dict.
        Returns:
            ``{file stem: matplotlib figure}``; the default is none.
        """
        return {}

    # == hyperparameters ===========================================================================================
    def __init__(self) -> None:
        """Subclasses take their hyperparameters as keyword arguments with defaults, keep each as an attribute of
        the same name, and call ``super().__init__()``. Called once per run (``bench.estimator.create_estimator``,
        hyperparameters checked and converted), and by ``resolve`` to plan the stages."""
        self.progress = Progress()

    @classmethod
    def hparam_defaults(cls) -> dict[str, Any]:
        """The hyperparameters and their defaults, read from ``__init__``'s keyword arguments: ``{name: default}``."""
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
        """The current hyperparameters, ``{name: value}`` (a stage may have changed some: :meth:`begin_stage`)."""
        return {k: getattr(self, k) for k in self.hparam_defaults()}

    def set_hparams(self, **values: Any) -> None:
        """Change hyperparameters mid-run (a stage's overrides, from :meth:`begin_stage`); names are checked and
        values converted to the defaults' types as at construction (a wrong one raises ``ConfigError``)."""
        values = coerce_hparams(type(self), values)
        for k, v in values.items():
            setattr(self, k, v)

    # == training hooks ============================================================================================
    progress: Progress = Progress()
    """Where training stands (stage, epoch within the stage, e/E as ``progress.fraction``), as the last
    :meth:`set_progress` gave it: what a schedule reads in :meth:`quantize`."""

    has_constraint: ClassVar[bool] = False
    """True when :meth:`constrain_` must run after every optimizer step. Read once per run, after the model is
    built (so a property of the hyperparameters may decide it, as for an optional clip)."""

    def quantizer(self, kind: str, shape: tuple[int, ...] | None = None, internal_scale: bool = False) -> Quantizer:
        """A new per-layer quantizer (an ``nn.Module`` whose forward calls :meth:`quantize`); calls :meth:`init_state`.

        Called by every binary layer at construction (``bench.layers``): once for its weight (``kind="weight"``,
        ``shape`` the weight's) and once for its input at binary activations (``kind="activation"``,
        ``shape=(input channels,)``). Not meant to be overridden.

        Args:
            kind: ``"weight"`` or ``"activation"``; one this estimator does not list in :attr:`kinds` is refused.
            shape: what the layer knows at construction (see :meth:`init_state`); None outside a layer.
            internal_scale: the layer's scaling is ``"internal"``: :meth:`quantize` applies the scale itself.
        Returns:
            The quantizer, to be held by the layer (so its state is the model's).
        """
        if kind not in self.kinds:
            raise ConfigError(f"estimator {self.name!r} cannot binarize {kind}s (it handles: {', '.join(self.kinds)})")
        return Quantizer(self, kind, shape, internal_scale)

    def init_state(self, q: Quantizer, shape: tuple[int, ...] | None) -> None:
        """Create per-layer parameters/buffers on ``q`` (``q.register_parameter``, ``q.register_buffer``, or an
        ``nn.Parameter`` attribute). Called once per quantizer, from :meth:`quantizer`, at layer construction.
        The default creates nothing.

        Args:
            q: the new quantizer (``q.kind``, ``q.shape`` and ``q.internal_scale`` are set).
            shape: for a weight quantizer the weight's shape, (out, in, kh, kw) or (out, in); for an activation
                quantizer ``(channels,)``, the layer's input channel count (conv ``in_channels``, linear
                ``in_features``), so per-channel activation state (a learnable threshold per channel) is made here
                with its final size; ``None`` for a quantizer built outside a layer.

        Create parameters here, not lazily in :meth:`quantize`: the optimizer is built from the model's parameters
        before the first batch (a lazy ``nn.UninitializedParameter`` is materialised by one forward pass first).
        """

    def quantize(self, x: Tensor, q: Quantizer) -> Tensor:
        """The binarized tensor, with the estimator's surrogate gradient attached: the one required hook.

        Called in every forward pass of a binary layer, through ``q(x)``: in training (every step) and in evaluation
        (``q.training`` tells which; :attr:`eval_mode` which evaluation), under autocast where the run uses it.
        Runs inside the training step: no host synchronisation (see the class docstring).

        Args:
            x: for a weight quantizer the layer's latent weight (the ``nn.Parameter`` the optimizer trains); for an
                activation quantizer the layer's input batch, (N, C, ...). In a pack, the member's own tensor.
            q: the layer's quantizer: its state from :meth:`init_state`, ``q.kind``, ``q.training`` and
                ``q.internal_scale``.
        Returns:
            A tensor of ``x``'s shape and dtype holding +-1 (or +-s: a scale, when ``q.internal_scale`` or the
            method's forward has one), whose gradient with respect to ``x`` (and to any parameter in ``q``) is the
            estimator's surrogate.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement quantize(x, q)")

    def latent(self, w: Tensor, q: Quantizer | None = None) -> Tensor:
        """The real value the estimator binarizes, w_hat: the quantization-error diagnostic, the flip count and
        ``"mean"`` scaling (mean |w_hat| per channel) are measured on it.

        Called per epoch by the diagnostics, and in every forward of a layer with ``"mean"`` scaling (detached; there
        it runs inside the training step: no host synchronisation).

        Args:
            w: a layer's latent weight (detached where it is called for a diagnostic).
            q: that layer's weight quantizer; None where none is at hand.
        Returns:
            w_hat, of ``w``'s shape; the default is ``w`` itself.
        """
        return w

    def set_progress(self, progress: Progress) -> None:
        """Tell the estimator where training stands, for schedules that :meth:`quantize` reads.

        Called at the start of every epoch, before its first step, on the weight and the activation estimator, and
        where a run is rebuilt after training (export, ``binbench evaluate``: its last epoch).

        Args:
            progress: stage index and name, epoch within the stage and the stage's epochs; ``progress.fraction`` is
                e/E (from 0 at a stage's first epoch; a probe may ask for any point in [0, 1]).
        The default keeps it as :attr:`progress`; an override calls ``super().set_progress(progress)``.
        """
        self.progress = progress

    def extra_loss(self, quantizers: list[Quantizer]) -> Tensor | None:
        """A term added to the task loss of the step (a regulariser on the latent weights).

        Called once per training step, after the forward pass (under the step's autocast) and before the backward,
        on the run's weight estimator only. Runs inside the step: no host synchronisation.

        Args:
            quantizers: every weight quantizer of the model, in module order (their ``forward`` has run this step,
                so values kept on them during :meth:`quantize` may be reused).
        Returns:
            A scalar tensor to add to the loss, or None for no term (the default).
        """
        return None

    def stages(self) -> list[Stage]:
        """The training stages, in order (a real-valued stage before the binary one, say), each with its share of
        the epochs and the hyperparameters it overrides.

        Called when a run is resolved (``bench.spec.resolve`` plans the stages on an instance made from the run's
        hyperparameters: the result may depend on them only) and by listings. The recipe gives each stage its
        optimizer settings; every stage gets a fresh optimizer.

        Returns:
            A non-empty list of :class:`Stage`; the default is one stage, ``Stage("main", 1.0)``.
        """
        return [Stage()]

    def begin_stage(self, index: int, stage: Stage) -> None:
        """Enter a stage.

        Called at the start of every stage, before its optimizer is built and before the stage's first
        :meth:`set_progress` (also when a resumed run re-enters a stage, and where a run is rebuilt after training:
        its last stage).

        Args:
            index: the stage's position in :meth:`stages`.
            stage: its name, and in ``overrides`` the hyperparameters that change in it: those the estimator's own
                :meth:`stages` declared, with the run config's per-stage values over them (the weight estimator's;
                an activation estimator of its own gets none). ``fraction`` is 1.0 here.
        The default applies ``stage.overrides`` with :meth:`set_hparams`.
        """
        if stage.overrides:
            self.set_hparams(**stage.overrides)

    def init_latent_(self, w: Tensor, q: Quantizer) -> None:
        """Re-initialise (or read) a layer's latent weight, once, after the model is built.

        Called once per binary layer, under no_grad, after the whole model is built and initialised
        (``bench.layers.init_latents_``, from ``create_model``), in module order. Not called for a checkpoint's
        weights: state derived here is saved with the model.

        Args:
            w: the weight the optimizer will train; may be changed in place (a xavier init of its own).
            q: the layer's weight quantizer, into whose state statistics of ``w`` may be read (a clipping range).
        The default does nothing.
        """

    def constrain_(self, w: Tensor, q: Quantizer) -> None:
        """Project a latent weight in place (a clip, a renormalisation).

        Called under no_grad after every optimizer step, and once before the first, on every binary weight, only
        where :attr:`has_constraint` is True. Runs inside the step: no host synchronisation.

        Args:
            w: a layer's latent weight parameter, to change in place.
            q: that layer's weight quantizer (its state may be projected too).
        The default does nothing.
        """

    # == evaluation ================================================================================================
    @property
    def eval_mode(self) -> str:
        """The evaluation mode the estimator is in, one of :attr:`eval_modes` (the headline one unless set): the one
        channel through which the mode reaches the estimator, read by :meth:`quantize` (in evaluation) and
        :meth:`predict`. The loop sets it around each mode's evaluation with :meth:`evaluating`; an exported run
        holds its export mode. Setting a mode the estimator does not list raises ``ConfigError``."""
        return self.__dict__.get("_eval_mode") or self.eval_modes[0]

    @eval_mode.setter
    def eval_mode(self, mode: str) -> None:
        if mode not in self.eval_modes:
            raise ConfigError(f"estimator {self.name!r} has no evaluation mode {mode!r}; its modes: "
                              f"{', '.join(self.eval_modes)}")
        self.__dict__["_eval_mode"] = mode

    @contextlib.contextmanager
    def evaluating(self, mode: str | None = None) -> Iterator[Estimator]:
        """``with est.evaluating(mode):`` sets :attr:`eval_mode` for the block and restores the previous mode after
        it (also on an error). Called by the loop around each evaluation mode of every epoch.

        Args:
            mode: one of :attr:`eval_modes`; None for the headline mode.
        Yields:
            The estimator.
        """
        previous = self.eval_mode
        self.eval_mode = self.eval_modes[0] if mode is None else mode
        try:
            yield self
        finally:
            self.eval_mode = previous

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        """The logits of ``model`` on the batch ``x`` in the current :attr:`eval_mode` (an ensemble of sampled
        networks, say).

        Called once per evaluation batch, under no_grad with the model in evaluation mode, inside
        :meth:`evaluating`, and by the export's check of the exported network (in :attr:`export_mode`).

        Args:
            model: the run's whole model.
            x: a batch of inputs.
        Returns:
            The logits, (N, classes); the default is ``model(x)``.

        (A plugin written for the earlier contract, ``predict(self, model, x, mode)``, keeps working: its method
        is called with ``mode=self.eval_mode``, and defining it warns once with a DeprecationWarning.)
        """
        return model(x)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("predict")
        if own is not None and _takes_mode(own):
            warnings.warn(f"{cls.__qualname__}.predict(self, model, x, mode): the evaluation mode is now read from "
                          "self.eval_mode (define predict(self, model, x)); called with mode=self.eval_mode",
                          DeprecationWarning, stacklevel=2)
            cls.predict = _mode_from_state(own)

    # == diagnostics ===============================================================================================
    def layer_diagnostics(self, w: Tensor, q: Quantizer) -> dict[str, float]:
        """Extra per-layer diagnostics, logged as ``diag/<layer path>/<name>`` and averaged over layers.

        Called once per epoch after its evaluation, under no_grad, per binary layer (not inside a step: it may
        read values on the host).

        Args:
            w: the layer's latent weight parameter (its ``.grad`` is the last step's).
            q: the layer's weight quantizer.
        Returns:
            ``{name: value}``; the default is none.
        """
        return {}

    def saturated(self, w: Tensor, q: Quantizer) -> Tensor | None:
        """Which latent weights lie outside the gradient support, for the ``saturation`` diagnostic.

        Called once per epoch per binary layer by the diagnostics.

        Args:
            w: the layer's latent weight (detached).
            q: the layer's weight quantizer.
        Returns:
            A boolean mask of ``w``'s shape, or None (the default): measured by autograd as the share of weights
            whose surrogate gradient is below a tolerance.
        """
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def _takes_mode(predict: Any) -> bool:
    """Whether a ``predict`` is of the earlier contract: a third argument (the evaluation mode) after model, x."""
    try:
        params = list(inspect.signature(predict).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.name == "mode" for p in params)


def _mode_from_state(predict: Any) -> Any:
    """An earlier-contract ``predict(self, model, x, mode)`` called as ``predict(self, model, x)``, the mode
    read from ``self.eval_mode``."""

    @functools.wraps(predict)
    def adapted(self: Estimator, model: nn.Module, x: Tensor) -> Tensor:
        return predict(self, model, x, self.eval_mode)

    return adapted


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
    """Docstring, hyperparameters with defaults, declared metadata and source of an estimator (its recipes:
    ``bench.recipes.recipe_table``)."""
    entry = ESTIMATORS.entry(name)
    cls = entry.obj
    try:
        file = inspect.getsourcefile(cls)
    except TypeError:
        file = None
    meta = cls.metadata()
    return {
        "name": name,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "doc": inspect.cleandoc(cls.__doc__ or ""),
        "hparams": cls.hparam_defaults(),
        "kinds": meta.kinds,
        "native_scaling": meta.native_scaling,
        "native_activation": native_activation_of(name),
        "eval_modes": meta.eval_modes,
        "role": meta.role,
        "stages": [s.name for s in cls().stages()],
        "source": entry.source,
        "file": file,
        "metadata": meta,
    }


def estimator_quantizers(model: nn.Module, kind: str | None = None) -> list[Quantizer]:
    """All quantizers in a model (optionally of one kind), in module order."""
    return [m for m in model.modules() if isinstance(m, Quantizer) and (kind is None or m.kind == kind)]


def as_tensor_points(x: Iterable[float] | Tensor) -> Tensor:
    return x.detach().clone().float() if isinstance(x, Tensor) else torch.tensor(list(x), dtype=torch.float32)
