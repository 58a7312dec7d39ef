"""The run configuration: every knob of one training run, resolved to concrete values before it starts.

Order of precedence, lowest first: the defaults below, the dataset's defaults (epochs, batch size), the
recipe (``common`` or ``published``), then what the user set. The resolved config is what a run records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from bench.errors import ConfigError, did_you_mean

BITS = {(1, 1): "W1A1", (1, 32): "W1A32", (32, 32): "W32A32", (32, 1): "W32A1"}


@dataclass
class RunConfig:
    # what is trained
    estimator: str = "ste"
    estimator_hparams: dict[str, Any] = field(default_factory=dict)
    activation_estimator: str | None = None  # None: the recipe's
    activation_hparams: dict[str, Any] = field(default_factory=dict)
    recipe: str = "common"
    model: str = "mlp"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    w_bits: int = 1
    a_bits: int = 1
    scaling: str | None = None  # none | mean | alpha | native; None: the recipe's
    # data
    data_root: str | None = None
    download: bool = False
    augment: bool = True
    train_subset: int | None = None  # first N training images (quick runs, tests)
    val_split: float | None = None  # a seeded share of the training images held out for model selection
    # optimisation
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int = 1000
    optimizer: str | None = None  # sgd | adam
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_schedule: str | None = None  # cosine | step | constant
    warmup_epochs: int | None = None
    stages: list[dict[str, Any]] | None = None  # per-stage overrides, in the estimator's stage order
    stage_handoff: str | None = None  # last | best: weights handed from one stage to the next
    # execution
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]
    threads: int | None = None
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False
    diagnostics: bool = True
    eval_modes: list[str] | None = None  # None: all of the estimator's
    checkpoint_dir: str | None = None
    resume: bool = False
    limit_train_batches: int | None = None

    @property
    def bits(self) -> str:
        return BITS.get((self.w_bits, self.a_bits), f"W{self.w_bits}A{self.a_bits}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
DICT_PREFIXES = {"estimator": "estimator_hparams", "activation": "activation_hparams", "model": "model_args"}
CHOICES = {
    "recipe": ("common", "published"),
    "scaling": ("none", "mean", "alpha", "native"),
    "optimizer": ("sgd", "adam"),
    "lr_schedule": ("cosine", "step", "constant"),
    "stage_handoff": ("last", "best"),
    "w_bits": (1, 32),
    "a_bits": (1, 32),
}


def parse_value(text: str) -> Any:
    """'20' -> 20, '0.1' -> 0.1, 'true' -> True, '[1, 2]' -> [1, 2], 'none' -> None, else the string."""
    if text.strip().lower() in {"none", "null"}:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` items into a nested override dict; ``estimator.w0=20`` sets an estimator hparam."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r} (e.g. --set lr=0.05 or --set estimator.w0=20)")
        key, value = item.split("=", 1)
        key = key.strip()
        if "." in key:
            prefix, sub = key.split(".", 1)
            if prefix not in DICT_PREFIXES:
                raise ConfigError(f"unknown --set prefix {prefix!r} in {key!r}; valid prefixes: "
                                  f"{', '.join(DICT_PREFIXES)}")
            out.setdefault(DICT_PREFIXES[prefix], {})[sub] = parse_value(value)
        else:
            out[key] = parse_value(value)
    return out


def _check_type(key: str, value: Any) -> Any:
    if value is None:
        return None
    f = FIELDS[key]
    typ = str(f.type)
    try:
        if typ.startswith("bool"):
            if isinstance(value, str):
                value = {"true": True, "false": False, "1": True, "0": False}[value.lower()]
            if not isinstance(value, bool):
                raise TypeError
        elif typ.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            value = int(value)
        elif typ.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            value = float(value)
        elif typ.startswith("str"):
            if not isinstance(value, str):
                raise TypeError
        elif typ.startswith("dict"):
            if not isinstance(value, dict):
                raise TypeError
        elif typ.startswith("list"):
            if not isinstance(value, list):
                raise TypeError
    except (TypeError, ValueError, KeyError):
        raise ConfigError(f"config key {key!r} must be {typ}, got {value!r}") from None
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, CHOICES[key]))}, got {value!r}")
    return value


def check_keys(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, FIELDS)}; "
                              "`binbench run --help` lists the keys")
        out[key] = _check_type(key, value)
    return out


def resolve_config(config: RunConfig | dict[str, Any]) -> RunConfig:
    """Fill every unset value from the recipe and the dataset; validate names and combinations."""
    from bench.data import get_dataset
    from bench.estimator import get_estimator_class
    from bench.models import MODELS
    from bench.recipes import resolve_recipe

    user = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    user = check_keys(user)
    cfg = RunConfig(**{k: v for k, v in user.items() if v is not None or FIELDS[k].default is None})
    est_cls = get_estimator_class(cfg.estimator)
    MODELS.get(cfg.model)
    ds = get_dataset(cfg.dataset)
    ctx = {"model": cfg.model, "dataset": cfg.dataset, "w_bits": cfg.w_bits, "a_bits": cfg.a_bits}
    recipe = resolve_recipe(cfg.estimator, cfg.recipe, ctx)
    recipe.setdefault("epochs", ds.default_epochs)
    recipe.setdefault("batch_size", ds.default_batch_size)
    for key, value in recipe.items():
        if key not in FIELDS:
            raise ConfigError(f"recipe {cfg.recipe!r} of {cfg.estimator!r} sets unknown key {key!r}")
        if key in ("estimator_hparams", "activation_hparams", "model_args"):
            setattr(cfg, key, {**value, **getattr(cfg, key)})  # the user's entries win
        elif user.get(key) is None:
            setattr(cfg, key, value)
    if cfg.momentum is None:
        cfg.momentum = 0.9
    if cfg.scaling == "native":
        cfg.scaling = est_cls.native_scaling
    if cfg.w_bits == 32 and cfg.a_bits == 1:
        raise ConfigError("W32A1 is not supported: use w_bits=1 (W1A1, W1A32) or w_bits=32 a_bits=32 (FP baseline)")
    if "weight" not in est_cls.kinds and cfg.w_bits == 1:
        raise ConfigError(f"estimator {cfg.estimator!r} binarizes activations only; pick a weight estimator")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    for key in ("recipe", "optimizer", "lr_schedule", "stage_handoff"):
        _check_type(key, getattr(cfg, key))
    if cfg.scaling not in ("none", "mean", "alpha", "internal"):
        raise ConfigError(f"scaling must be none, mean, alpha or native, got {cfg.scaling!r}")
    from bench.estimator import coerce_hparams

    # record every hyperparameter, defaults included: a run's config is complete on its own
    cfg.estimator_hparams = {**est_cls.hparam_defaults(), **coerce_hparams(est_cls, cfg.estimator_hparams)}
    if cfg.a_bits == 32:
        cfg.activation_estimator = None
        cfg.activation_hparams = {}
    elif cfg.activation_estimator is not None:
        act_cls = get_estimator_class(cfg.activation_estimator)
        if "activation" not in act_cls.kinds:
            raise ConfigError(f"estimator {cfg.activation_estimator!r} cannot binarize activations")
        # the same estimator on both sides shares the weight side's hyperparameters unless told otherwise
        base = cfg.estimator_hparams if cfg.activation_estimator == cfg.estimator else act_cls.hparam_defaults()
        cfg.activation_hparams = {**base, **coerce_hparams(act_cls, cfg.activation_hparams)}
    if cfg.eval_modes is not None:
        bad = [m for m in cfg.eval_modes if m not in est_cls.eval_modes]
        if bad:
            raise ConfigError(f"eval mode(s) {bad} unknown for {cfg.estimator!r}; "
                              f"valid: {', '.join(est_cls.eval_modes)}")
    if ds.streaming and (cfg.train_subset or cfg.val_split):
        raise ConfigError("train_subset and val_split are not supported for streaming datasets (ImageNet)")
    if cfg.val_split is not None and not 0.0 < cfg.val_split < 1.0:
        raise ConfigError(f"val_split must be a fraction in (0, 1), got {cfg.val_split} (e.g. --set val_split=0.1)")
    if cfg.train_subset is not None and cfg.train_subset < 1:
        raise ConfigError(f"train_subset must be >= 1, got {cfg.train_subset}")
    return cfg
