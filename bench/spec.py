"""The run specification: one training run, resolved once.

:func:`resolve` is the one place a configuration becomes concrete: the defaults, the dataset's defaults, the
recipe (``common`` or ``published``) and what the user set, lowest first, then every name and combination
checked. It returns an immutable :class:`RunSpec` (the resolved config, the typed stage plan, the evaluation modes
and the run's key). Suites build specs, the executors ship them unchanged, ``train()`` takes one and never
resolves or defaults anything again.

The key (:func:`run_key`) is the run's one identity: it names its checkpoint folder, is the fingerprint a
resumed run must match, the MLflow tag of its run, and what a report counts once. Execution settings (threads,
device, data root, checkpoint folder, evaluation batch size) are not part of it: :meth:`RunSpec.with_execution`
changes them and keeps the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench.config import (
    FIELDS,
    RANGES,
    SCALINGS,
    RunConfig,
    check_hparam_types,
    check_keys,
    check_type,
    check_values,
)
from bench.errors import ConfigError, did_you_mean
from bench.origin import code_digest

#: keys that change where/how a run executes, not what it computes: left out of its key
EXECUTION_KEYS = frozenset({"threads", "device", "data_root", "download", "checkpoint_dir", "resume",
                            "eval_batch_size"})
#: what a stage of the config's ``stages`` list may set
STAGE_KEYS = ("epochs", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "warmup_epochs", "estimator",
              "name")
#: keys added after runs were recorded, left out of the key at the value every earlier run had, so that the stores
#: of those runs keep their keys (their runs computed exactly that)
KEY_LEGACY = {"schedule_unit": "iteration"}
NESTED = ("estimator_hparams", "activation_hparams", "model_args")


@dataclass(frozen=True)
class StagePlan:
    """One training stage as it will run: its epochs and optimizer settings, and the estimator hyperparameters
    that change in it."""

    index: int
    name: str
    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    lr_schedule: str
    warmup_epochs: int
    estimator: Mapping[str, Any]
    schedule_unit: str = "iteration"  # "epoch": the lr holds for a whole epoch (see bench.train.lr_factor)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "estimator": dict(self.estimator)}


@dataclass(frozen=True)
class RunSpec:
    """A resolved run: what ``train()`` takes. Build it with :func:`resolve`."""

    config: RunConfig
    stages: tuple[StagePlan, ...]
    eval_modes: tuple[str, ...]
    key: str
    suite: str | None = None
    #: a digest of the source of the estimators it uses (``bench.origin``): with the key, what ``--resume`` compares
    code: str = ""

    @property
    def estimators(self) -> dict[str, str]:
        """The estimators the run uses by role: {"weight": ..., "activation": ...} (binary ones only)."""
        cfg, out = self.config, {}
        if cfg.w_bits == 1:
            out["weight"] = cfg.estimator
        if cfg.a_bits == 1:
            out["activation"] = cfg.activation_estimator or cfg.estimator
        return out

    def with_execution(self, **values: Any) -> RunSpec:
        """The same run with other execution settings (:data:`EXECUTION_KEYS`); the key stays."""
        bad = sorted(set(values) - EXECUTION_KEYS)
        if bad:
            raise ConfigError(f"{', '.join(bad)} change what a run computes: resolve a new spec for them")
        checked = check_keys(values)
        check_values(checked)
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **checked))

    def with_values(self, **values: Any) -> RunSpec:
        """Another run that differs in ``values`` (a search point): resolved again, with its own key."""
        return resolve({**recorded_values(self.config.to_dict()), **values}, self.suite)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "stages": [s.to_dict() for s in self.stages],
                "eval_modes": list(self.eval_modes), "key": self.key, "suite": self.suite, "code": self.code}


#: the estimator name of a full-precision run (a suite's baseline cell, ``binbench run --bits FP32``)
FP = "fp"


@dataclass(frozen=True)
class RunIdentity:
    """What names a run wherever it is recorded: its key, the suite it belongs to ("" for ``binbench run``) and
    the cell and seed it trains, as its MLflow tags and its label show them. The one place the label format and
    the "fp" of a full-precision run are decided, for suite trials and single runs alike."""

    key: str
    suite: str
    estimator: str  # FP for a full-precision run
    model: str
    dataset: str
    bits: str
    recipe: str
    seed: int
    budget: float | None = None  # a suite with ``budgets``: the share of the cell's epochs (a cell of its own)

    @classmethod
    def of(cls, spec: RunSpec, suite: str = "") -> RunIdentity:
        c = spec.config
        return cls(spec.key, suite, c.estimator if c.w_bits == 1 else FP, c.model, c.dataset, c.bits, c.recipe, c.seed)

    @property
    def cell(self) -> str:
        # a budget is a cell of its own: a search compares points only at the same budget
        return f"{self.estimator}|{self.model}|{self.dataset}|{self.bits}|{self.recipe}" + self._budget("|b")

    @property
    def label(self) -> str:
        label = f"{self.estimator}-{self.model}-{self.dataset}-{self.bits}-{self.recipe}-s{self.seed}"
        return label + self._budget("-b")

    def _budget(self, sep: str) -> str:
        return f"{sep}{self.budget:g}" if self.budget is not None else ""


def run_key(config: RunConfig, suite: str | None = None) -> str:
    """The run's identity: a digest of its suite and its resolved config without execution settings."""
    ident = {k: v for k, v in config.to_dict().items()
             if k not in EXECUTION_KEYS and not (k in KEY_LEGACY and v == KEY_LEGACY[k])}
    blob = json.dumps({"suite": suite, "config": ident}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def recorded_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved config (a run's ``config.json`` or params, an export's manifest, a spec's own config) as values
    :func:`resolve` takes again and resolves to the same config: a scaling of ``internal`` is what ``native``
    resolved to for an estimator that scales inside its quantizer, and is asked for as ``native`` again (users
    ask for ``native``; ``internal`` is not a choice)."""
    values = dict(config)
    if values.get("scaling") == "internal":
        values["scaling"] = "native"
    return values


def resolve(config: RunConfig | Mapping[str, Any], suite: str | None = None) -> RunSpec:
    """Resolve a configuration (a :class:`RunConfig` or a dict of its keys; unset values None) into a spec.

    Every problem is a one-line :class:`ConfigError` naming the key and what would be valid."""
    from bench.estimator import get_estimator_class

    user = check_keys(config.to_dict() if isinstance(config, RunConfig) else dict(config))
    values = {k: v for k, v in user.items() if v is not None or FIELDS[k].default is None}
    values = {**{k: _default(k) for k in FIELDS}, **values}
    _apply_recipe(values, user)
    _check_combinations(values)
    _complete_hparams(values)
    cfg = RunConfig(**values)
    est_cls = None if cfg.w_bits == 32 else get_estimator_class(cfg.estimator)
    stages = plan_stages(cfg, est_cls(**cfg.estimator_hparams) if est_cls is not None else None)
    modes = tuple(cfg.eval_modes or (est_cls.eval_modes if est_cls is not None else ("default",)))
    spec = RunSpec(cfg, stages, modes, run_key(cfg, suite), suite)
    return dataclasses.replace(spec, code=code_digest(tuple(spec.estimators.values())))


def _default(key: str) -> Any:
    f = FIELDS[key]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]


def _apply_recipe(values: dict[str, Any], user: Mapping[str, Any]) -> None:
    """The dataset's defaults and the recipe's values under what the user set; the reference estimator where
    none is named."""
    from bench.data import get_dataset
    from bench.estimator import get_estimator_class, reference_estimator
    from bench.models import MODELS
    from bench.recipes import resolve_recipe

    if values["estimator"] is None:
        values["estimator"] = reference_estimator()
    est_cls = get_estimator_class(values["estimator"])
    MODELS.get(values["model"])
    ds = get_dataset(values["dataset"])
    ctx = {k: values[k] for k in ("model", "dataset", "w_bits", "a_bits")}
    recipe = resolve_recipe(values["estimator"], values["recipe"], ctx)
    recipe.setdefault("epochs", ds.default_epochs)
    recipe.setdefault("batch_size", ds.default_batch_size)
    if _other_activation(user.get("activation_estimator"), recipe.get("activation_estimator")):
        recipe.pop("activation_hparams", None)  # the recipe's are for its own activation estimator, not the user's
    for key, value in recipe.items():
        if key not in FIELDS:
            raise ConfigError(f"recipe {values['recipe']!r} of {values['estimator']!r} sets unknown key {key!r}")
        if key in NESTED:
            values[key] = {**value, **(values[key] or {})}  # the user's entries win
        elif user.get(key) is None:
            values[key] = value
    if values["momentum"] is None:
        values["momentum"] = 0.9
    if values["scaling"] == "native":
        values["scaling"] = est_cls.native_scaling


def _other_activation(chosen: str | None, recipes: str | None) -> bool:
    """Whether the user chose an activation estimator other than the recipe's."""
    from bench.estimator import COMMON_ACTIVATION, common_activation_estimator

    def named(n: str) -> str:
        return common_activation_estimator() if n == COMMON_ACTIVATION else n

    return chosen is not None and recipes is not None and named(chosen) != named(recipes)


def _check_combinations(v: dict[str, Any]) -> None:
    from bench.data import get_dataset
    from bench.estimator import get_estimator_class

    est_cls = get_estimator_class(v["estimator"])
    if v["w_bits"] == 32 and v["a_bits"] == 1:
        raise ConfigError("W32A1 is not supported: use w_bits=1 (W1A1, W1A32) or w_bits=32 a_bits=32 (FP baseline)")
    if "weight" not in est_cls.kinds and v["w_bits"] == 1:
        raise ConfigError(f"estimator {v['estimator']!r} binarizes activations only; pick a weight estimator")
    for key in ("recipe", "optimizer", "lr_schedule", "stage_handoff"):
        check_type(key, v[key])
    if v["scaling"] not in SCALINGS:
        raise ConfigError(f"scaling must be none, mean, alpha or native, got {v['scaling']!r}")
    if v["eval_modes"] is not None:
        bad = [m for m in v["eval_modes"] if m not in est_cls.eval_modes]
        if bad:
            raise ConfigError(f"eval mode(s) {bad} unknown for {v['estimator']!r}; valid: "
                              f"{', '.join(est_cls.eval_modes)}")
    if get_dataset(v["dataset"]).streaming and (v["train_subset"] or v["val_split"]):
        raise ConfigError("train_subset and val_split are not supported for streaming datasets (ImageNet)")
    if v["val_split"] is not None and not 0.0 < v["val_split"] < 1.0:
        raise ConfigError(f"val_split must be a fraction in (0, 1), got {v['val_split']} (e.g. --set val_split=0.1)")
    check_values(v)
    for i, stage in enumerate(v["stages"] or []):
        if not isinstance(stage, dict):
            raise ConfigError(f"stages[{i}] must be a mapping of config keys, got {stage!r}")
        check_values({k: x for k, x in stage.items() if k in RANGES}, where=f"stages[{i}].")
    check_model_args(v["model"], v["model_args"])


def _complete_hparams(v: dict[str, Any]) -> None:
    """Every hyperparameter recorded, defaults included (a run's config is complete on its own); the activation
    estimator named (the recipe's common one resolved to its registered name)."""
    from bench.estimator import COMMON_ACTIVATION, coerce_hparams, common_activation_estimator, get_estimator_class

    est_cls = get_estimator_class(v["estimator"])
    check_hparam_types(est_cls, v["estimator_hparams"])
    v["estimator_hparams"] = {**est_cls.hparam_defaults(), **coerce_hparams(est_cls, v["estimator_hparams"])}
    if v["a_bits"] == 32:
        v["activation_estimator"], v["activation_hparams"] = None, {}
        return
    if v["activation_estimator"] == COMMON_ACTIVATION:
        v["activation_estimator"] = common_activation_estimator()
    if v["activation_estimator"] is None:
        return
    act_cls = get_estimator_class(v["activation_estimator"])
    if "activation" not in act_cls.kinds:
        raise ConfigError(f"estimator {v['activation_estimator']!r} cannot binarize activations")
    # the same estimator on both sides shares the weight side's hyperparameters unless told otherwise
    base = v["estimator_hparams"] if v["activation_estimator"] == v["estimator"] else act_cls.hparam_defaults()
    check_hparam_types(act_cls, v["activation_hparams"], "activation")
    v["activation_hparams"] = {**base, **coerce_hparams(act_cls, v["activation_hparams"])}


def check_model_args(model: str, args: dict[str, Any]) -> None:
    """Model arguments against the model's signature: known names, sizes positive integers, known activations."""
    from bench.models import model_args  # spec resolves models: config, below them, does not

    valid = model_args(model)
    for key, value in args.items():
        if key not in valid:
            raise ConfigError(f"unknown argument {key!r} for model {model!r}{did_you_mean(key, valid)}; valid: "
                              f"{', '.join(valid)} (set with --set model.NAME=VALUE)")
        default = valid[key]
        if key == "act":
            if value not in (None, "hardtanh", "relu", "prelu", "identity"):
                raise ConfigError(f"model.act must be hardtanh, relu, prelu or identity, got {value!r}")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"model.{key} must be true or false, got {value!r}")
        elif isinstance(default, (list, tuple)):
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
                raise ConfigError(f"model.{key} must be a non-empty list of positive integers (layer sizes), got "
                                  f"{value!r} (e.g. --set model.{key}=[64,64])")
        elif isinstance(default, int) or (default is None and key.endswith(("stride", "width", "hidden"))):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"model.{key} must be a positive integer, got {value!r}")


def plan_stages(cfg: RunConfig, est: Any) -> tuple[StagePlan, ...]:
    """The stages as they will run: the estimator's stages, split of the epochs, and the config's per-stage
    overrides (``stages``) over its optimizer settings."""
    from bench.estimator import Stage

    stages: list[Stage] = est.stages() if est is not None else [Stage()]
    overrides = cfg.stages or []
    names = ", ".join(s.name for s in stages)
    if len(overrides) > len(stages):
        raise ConfigError(f"config gives {len(overrides)} stages but {cfg.estimator!r} trains in {len(stages)} "
                          f"({names})")
    if cfg.epochs < len(stages):
        raise ConfigError(f"{cfg.estimator!r} trains in {len(stages)} stages ({names}): give --epochs >= "
                          f"{len(stages)}")
    total_fraction, cum, bounds = sum(s.fraction for s in stages), 0.0, [0]
    for s in stages:
        cum += s.fraction
        bounds.append(round(cfg.epochs * cum / total_fraction))
    plan = []
    for i, s in enumerate(stages):
        ov = dict(overrides[i]) if i < len(overrides) else {}
        unknown = set(ov) - set(STAGE_KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in stage {i} ({s.name}); valid: "
                              f"{', '.join(k for k in STAGE_KEYS if k != 'name')}")
        plan.append(StagePlan(
            index=i, name=s.name, epochs=int(ov.get("epochs", max(1, bounds[i + 1] - bounds[i]))),
            optimizer=ov.get("optimizer", cfg.optimizer), lr=float(ov.get("lr", cfg.lr)),
            momentum=float(ov.get("momentum", cfg.momentum)),
            weight_decay=float(ov.get("weight_decay", cfg.weight_decay)),
            lr_schedule=ov.get("lr_schedule", cfg.lr_schedule),
            warmup_epochs=int(ov.get("warmup_epochs", cfg.warmup_epochs)),
            estimator={**s.overrides, **ov.get("estimator", {})}, schedule_unit=cfg.schedule_unit))
    return tuple(plan)
