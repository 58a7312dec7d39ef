"""The run configuration: every knob of one training run, and the checks of single values.

``bench.spec.resolve`` turns a configuration into concrete values (order of precedence, lowest first: the
defaults below, the dataset's defaults, the recipe, then what the user set); the resolved config is what a run
records. The one table of bit widths, scalings and recipe names lives here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from bench.errors import ConfigError, did_you_mean, example_of, type_words
from bench.words import BOOL_WORDS, RECIPES, parse_bool

#: the bit widths a run can have: name -> (weight bits, activation bits)
BITS = {"W1A1": (1, 1), "W1A32": (1, 32), "FP32": (32, 32)}
#: weight scalings a layer applies (``internal``: the estimator scales inside its quantizer)
SCALINGS = ("none", "mean", "alpha", "internal")
#: what a user may ask for: a layer scaling, or the estimator's own (``native``)
SCALING_CHOICES = (*SCALINGS[:-1], "native")


def bits_name(w_bits: int, a_bits: int) -> str:
    """W1A1, W1A32, FP32 (or W{w}A{a} for a width outside the table)."""
    return next((name for name, wa in BITS.items() if wa == (w_bits, a_bits)), f"W{w_bits}A{a_bits}")


@dataclass(frozen=True)
class RunConfig:
    # what is trained
    estimator: str | None = None  # None: the reference estimator
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
    #: how the learning rate moves: "iteration" (every step: binbench's default) or "epoch" (held for an epoch, as
    #: the official ReCU/BiPer/ReSTE/IR-Net scripts step their warm-up and cosine); None: the recipe's
    schedule_unit: str | None = None
    stages: list[dict[str, Any]] | None = None  # per-stage overrides, in the estimator's stage order
    stage_handoff: str | None = None  # last | best: weights handed from one stage to the next
    # execution
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]
    threads: int | None = None  # torch threads; None: 1 (a run stays fast on a shared machine; set it for more)
    amp: bool | None = None  # bf16 autocast, CUDA only; None: the recipe's (published: float32, as the official code)
    channels_last: bool | None = None  # CUDA only; None: the recipe's
    compile: bool = False
    diagnostics: bool = True
    eval_modes: list[str] | None = None  # None: all of the estimator's
    checkpoint_dir: str | None = None
    resume: bool = False
    limit_train_batches: int | None = None

    @property
    def bits(self) -> str:
        return bits_name(self.w_bits, self.a_bits)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
DICT_PREFIXES = {"estimator": "estimator_hparams", "activation": "activation_hparams", "model": "model_args"}
CHOICES = {
    "recipe": RECIPES,
    "scaling": SCALING_CHOICES,
    "optimizer": ("sgd", "adam"),
    "lr_schedule": ("cosine", "step", "constant"),
    "schedule_unit": ("iteration", "epoch"),
    "stage_handoff": ("last", "best"),
    "w_bits": tuple(sorted({w for w, _ in BITS.values()})),
    "a_bits": tuple(sorted({a for _, a in BITS.values()})),
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


# The schema is checked by hand here (and in bench/suite.py's parse_suite), not by pydantic, for measured reasons:
# importing pydantic and building one model took 217-247 ms on this 2-core machine (three runs), against 59-77 ms
# for all of bench.config, and `binbench run --help` imports this module on the path that must stay under 1 s; a
# pydantic ValidationError is several lines in types' words ("Input should be a valid number, unable to parse
# string as a number [type=float_parsing, ...]" plus a URL) where binbench owes one line naming the key, what is
# valid and a did-you-mean; rewriting its errors() into those lines needs a table per error type and per key about
# the size of these checks; and the valid values come from registries plugins extend at run time (estimators'
# hyperparameters, models' arguments), checked at resolve time against each one's signature, which a static model
# does not describe.
def check_type(key: str, value: Any) -> Any:
    if value is None:
        return None
    f = FIELDS[key]
    typ = str(f.type)
    try:
        if typ.startswith("bool"):
            if isinstance(value, str):
                value = parse_bool(value)
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
        raise ConfigError(f"config key {key!r} must be {type_words(typ)}, got {value!r}") from None
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, CHOICES[key]))}, got {value!r}")
    return value


def keys_help() -> str:
    """Every config key with what it takes, one per line (``binbench run --help``)."""
    lines = []
    for name, f in FIELDS.items():
        what = " | ".join(map(str, CHOICES[name])) if name in CHOICES else type_words(str(f.type))
        if f.default is None:
            what += " (none: the recipe's or dataset's)" if "none" not in what else ""
        lines.append(f"  {name:<22} {what}")
    lines += ["  estimator.NAME         an estimator hyperparameter (binbench show estimator NAME lists them)",
              "  activation.NAME        one of the activation estimator",
              "  model.NAME             a model argument (e.g. model.hidden=[256,256])"]
    return "\n".join(lines)


def check_keys(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if key not in FIELDS:
            raise ConfigError(f"unknown config key {key!r}{did_you_mean(key, FIELDS)}; valid: {', '.join(FIELDS)}, "
                              "and estimator.NAME, activation.NAME, model.NAME (`binbench run --help` says more)")
        out[key] = check_type(key, value)
    return out


#: value ranges of numeric keys: (lowest, highest, the lowest is allowed, how to say it)
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "seed": (0, 2**32 - 1, True, "an integer in 0..2**32-1"),
    "threads": (1, float("inf"), True, ">= 1"),
    "eval_batch_size": (1, float("inf"), True, ">= 1"),
    "batch_size": (1, float("inf"), True, ">= 1"),
    "epochs": (1, float("inf"), True, ">= 1"),
    "train_subset": (1, float("inf"), True, ">= 1 (the first N training images)"),
    "limit_train_batches": (1, float("inf"), True, ">= 1 (batches per epoch)"),
    "lr": (0, float("inf"), False, "> 0"),
    "momentum": (0, 1, True, "in [0, 1)"),
    "weight_decay": (0, float("inf"), True, ">= 0"),
    "warmup_epochs": (0, float("inf"), True, ">= 0"),
}
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_values(values: dict[str, Any], where: str = "") -> None:
    """Ranges and forms of single values (see :data:`RANGES`); None means "the recipe's" and passes."""
    import math

    for key, value in values.items():
        if value is None:
            continue
        if key in RANGES:
            lo, hi, closed, says = RANGES[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}{key} must be a number {says}, got {value!r}")
            ok = (lo <= value if closed else lo < value) and (value < hi if key == "momentum" else value <= hi)
            if not ok or (isinstance(value, float) and math.isnan(value)):
                raise ConfigError(f"{where}{key} must be {says}, got {value!r} (e.g. --set {key}=...)")
        elif key == "device" and not (isinstance(value, str) and DEVICE_RE.match(value)):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r} (e.g. --set device=cpu)")


def check_hparam_types(est_cls, values: dict[str, Any], side: str = "estimator") -> None:
    """Hyperparameter values against the types of the estimator's declared defaults (no silent bool(5))."""
    defaults, declared = est_cls.hparam_defaults(), est_cls.hparam_types()
    for key, value in values.items():
        if key not in defaults or value is None:
            continue  # unknown names: coerce_hparams says so, with the valid ones
        d = defaults[key]
        if d is None:  # the declared type tells ("float | None")
            d = example_of(declared.get(key, ""))
            if d is None:
                continue
        if isinstance(d, bool):
            ok = isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in BOOL_WORDS)
        elif isinstance(d, (int, float)):
            ok = not isinstance(value, (bool, list, dict, tuple))
        elif isinstance(d, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise ConfigError(f"hyperparameter {key!r} of estimator {est_cls.name!r} must be "
                              f"{type_words(declared.get(key) or type(d).__name__)} (its default is "
                              f"{defaults[key]!r}), got {value!r} (--set {side}.{key}=...)")


SPACE_ARITY = {"loguniform": 2, "uniform": 2, "randint": 2}


def check_space(key: str, spec: Any) -> list[str]:
    """One search-space entry ``{kind: args}``: its arguments, and every value it can give checked as the key's."""
    if not (isinstance(spec, dict) and len(spec) == 1):
        return []  # the suite reports the form
    (kind, args), = spec.items()
    out: list[str] = []
    if kind in SPACE_ARITY:
        if (not isinstance(args, list) or len(args) != 2
                or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args)):
            return [f"search.space.{key}.{kind} needs [low, high] (two numbers), got {args!r}"]
        lo, hi = args
        if not lo < hi:
            out.append(f"search.space.{key}.{kind}: low must be below high, got {args!r}")
        if kind == "loguniform" and lo <= 0:
            out.append(f"search.space.{key}.loguniform: bounds must be > 0, got {args!r}")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            out.append(f"search.space.{key}.randint needs two integers, got {args!r}")
        values = [lo, hi] if kind != "randint" else [lo, hi - 1]
    elif kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            return [f"search.space.{key}.{kind} needs a non-empty list of values, got {args!r}"]
        values = args
    else:
        return []
    if key in FIELDS:
        for v in values:
            try:
                check_values(check_keys({key: v}))
            except ConfigError as exc:
                out.append(f"search.space.{key}.{kind}: {exc}")
                break
    return out
