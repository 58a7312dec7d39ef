"""Suites: YAML files that name a grid of runs (estimators x models x datasets x bits x recipes x seeds).

A suite is validated as a whole before anything starts: every problem (unknown key, wrong type, unknown name,
impossible combination, missing data) is reported together, one line each with the file, the key and what
would be valid.

    name: smoke
    description: every estimator on digits
    grid:
      estimators: all            # or a list; 'all' = every registered weight estimator
      models: [mlp]
      datasets: [digits]
      bits: [W1A1]               # W1A1, W1A32, FP32
      recipes: [common]          # common, published
      seeds: [0, 1]
    fp_baseline: true            # one full-precision run per model/dataset/seed
    defaults: {epochs: 5}        # run-config keys for every trial
    overrides:                   # run-config keys for the cells whose estimator/model/dataset/bits/recipe
      vispa: {estimator_hparams: {samples: 8}}     # match every '/'-separated part of the key
      convnet: {epochs: 2}
      biper/convnet: {epochs: 4}
    search:                      # optional: Ray Tune search with ASHA, same budget per grid cell
      metric: test_top1
      mode: max
      num_samples: 4
      space: {lr: {loguniform: [0.01, 0.5]}}
      asha: {grace_period: 1, reduction_factor: 2}   # optional: without it every sampled point runs to the end

With a search, --resume skips a whole grid cell once any of its sampled points finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.config import FIELDS, RunConfig, check_keys, check_space, resolve_config
from bench.errors import BinbenchError, did_you_mean

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
BITS = {"W1A1": (1, 1), "W1A32": (1, 32), "FP32": (32, 32)}
TOP_KEYS = {"name", "description", "grid", "fp_baseline", "defaults", "overrides", "search", "notes"}
GRID_KEYS = {"estimators", "models", "datasets", "bits", "recipes", "seeds"}
SEARCH_KEYS = {"metric", "mode", "num_samples", "space", "asha"}
SPACE_KINDS = {"loguniform", "uniform", "choice", "randint", "grid"}
#: keys that change where/how a trial runs, not what it computes: left out of its identity
EXECUTION_KEYS = {"threads", "device", "data_root", "download", "checkpoint_dir", "resume", "eval_batch_size"}


class SuiteError(BinbenchError):
    """One or more problems in a suite file, one line each."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        head = f"suite {path} has {len(problems)} problem{'s' if len(problems) > 1 else ''}"
        super().__init__(head + ":\n  " + "\n  ".join(problems))


@dataclass
class Trial:
    """One cell of the grid with one seed (and, in a search, one sampled point)."""

    suite: str
    estimator: str  # "fp" for the full-precision baseline
    model: str
    dataset: str
    bits: str
    recipe: str
    seed: int
    config: dict[str, Any]  # user-level RunConfig values
    resolved: dict[str, Any] = field(default_factory=dict)
    key: str = ""

    @property
    def cell(self) -> str:
        return f"{self.estimator}|{self.model}|{self.dataset}|{self.bits}|{self.recipe}"

    @property
    def label(self) -> str:
        return f"{self.estimator}-{self.model}-{self.dataset}-{self.bits}-{self.recipe}-s{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "estimator": self.estimator, "model": self.model, "dataset": self.dataset,
                "bits": self.bits, "recipe": self.recipe, "seed": self.seed, "config": self.config, "key": self.key,
                "cell": self.cell, "label": self.label}


@dataclass
class Suite:
    name: str
    path: str
    description: str
    trials: list[Trial]
    search: dict[str, Any] | None
    raw: dict[str, Any]


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def find_suite(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise BinbenchError(f"suite file {p} does not exist")
        return p.resolve()
    cand = SUITES_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    raise BinbenchError(f"unknown suite {name_or_path!r}{did_you_mean(name_or_path, list_suites())}; "
                        f"`binbench suite list` shows {', '.join(list_suites())}, or pass a path to a .yaml file")


def trial_key(suite: str, resolved: dict[str, Any]) -> str:
    ident = {k: v for k, v in resolved.items() if k not in EXECUTION_KEYS}
    blob = json.dumps({"suite": suite, "config": ident}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def load_suite(name_or_path: str, data_root: str | None = None, check_data: bool = False) -> Suite:
    """Read, validate and expand a suite; raise SuiteError listing every problem."""
    from bench.data import DATASETS
    from bench.estimator import ESTIMATORS, get_estimator_class
    from bench.models import MODELS

    path = find_suite(name_or_path)
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise SuiteError(where, [f"not valid YAML{at}: {getattr(exc, 'problem', exc)}"]) from None
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise SuiteError(where, ["the top level must be a mapping with keys: " + ", ".join(sorted(TOP_KEYS))])
    for k in raw:
        if k not in TOP_KEYS:
            problems.append(f"{where}: unknown key {k!r}{did_you_mean(str(k), TOP_KEYS)}; valid: "
                            f"{', '.join(sorted(TOP_KEYS))}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str):
        problems.append(f"{where}: 'name' must be a string, got {name!r}")
        name = path.stem
    grid = raw.get("grid")
    if not isinstance(grid, dict):
        problems.append(f"{where}: 'grid' must be a mapping with keys {', '.join(sorted(GRID_KEYS))}")
        grid = {}
    for k in grid:
        if k not in GRID_KEYS:
            problems.append(f"{where}: grid: unknown key {k!r}{did_you_mean(str(k), GRID_KEYS)}; valid: "
                            f"{', '.join(sorted(GRID_KEYS))}")

    def names(key: str, registry, default: list[str] | None = None) -> list[str]:
        value = grid.get(key, default)
        if value is None:
            problems.append(f"{where}: grid.{key} is missing; valid: {', '.join(registry.names())}")
            return []
        if value == "all" and key == "estimators":
            return [n for n in registry.names() if "weight" in get_estimator_class(n).kinds
                    and not n.startswith("test_")]
        out = []
        for v in _as_list(value):
            if not isinstance(v, str) or v not in registry:
                problems.append(f"{where}: grid.{key}: unknown {registry.kind} {v!r}{did_you_mean(str(v), registry)}; "
                                f"valid: {', '.join(registry.names())}")
            else:
                out.append(v)
        return out

    estimators = names("estimators", ESTIMATORS)
    models = names("models", MODELS)
    datasets = names("datasets", DATASETS)
    bits = []
    for b in _as_list(grid.get("bits", ["W1A1"])):
        if b not in BITS:
            problems.append(f"{where}: grid.bits: unknown {b!r}; valid: {', '.join(BITS)}")
        else:
            bits.append(b)
    recipes = []
    for r in _as_list(grid.get("recipes", ["common"])):
        if r not in ("common", "published"):
            problems.append(f"{where}: grid.recipes: unknown {r!r}; valid: common, published")
        else:
            recipes.append(r)
    seeds = _as_list(grid.get("seeds", [0]))
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        problems.append(f"{where}: grid.seeds must be a list of integers, got {grid.get('seeds')!r}")
        seeds = []
    fp = raw.get("fp_baseline", False)
    if not isinstance(fp, bool):
        problems.append(f"{where}: 'fp_baseline' must be true or false, got {fp!r}")
        fp = False

    defaults = raw.get("defaults", {}) or {}
    if not isinstance(defaults, dict):
        problems.append(f"{where}: 'defaults' must be a mapping of run-config keys")
        defaults = {}
    for k, v in defaults.items():
        if k in ("estimator", "model", "dataset", "seed", "recipe", "w_bits", "a_bits"):
            problems.append(f"{where}: defaults.{k}: set it in 'grid', not in 'defaults'")
        elif k not in FIELDS:
            problems.append(f"{where}: defaults: unknown run-config key {k!r}{did_you_mean(str(k), FIELDS)}")
        else:
            try:
                check_keys({k: v})
            except BinbenchError as exc:
                problems.append(f"{where}: defaults.{k}: {exc}")
    overrides = raw.get("overrides", {}) or {}
    if not isinstance(overrides, dict):
        problems.append(f"{where}: 'overrides' must map estimator names to run-config keys")
        overrides = {}
    known_parts = set(ESTIMATORS.names()) | set(MODELS.names()) | set(DATASETS.names()) | set(BITS) | {
        "fp", "common", "published"}
    for est, ov in overrides.items():
        for part in str(est).split("/"):
            if part not in known_parts:
                problems.append(f"{where}: overrides: {est!r}: {part!r} is no estimator, model, dataset, bits or "
                                f"recipe name{did_you_mean(part, known_parts)}")
        if not isinstance(ov, dict):
            problems.append(f"{where}: overrides.{est} must be a mapping of run-config keys")
            continue
        for k in ov:
            if k not in FIELDS:
                problems.append(f"{where}: overrides.{est}: unknown run-config key {k!r}"
                                f"{did_you_mean(str(k), FIELDS)}")
    search = raw.get("search")
    if search is not None:
        problems += _check_search(where, search)

    trials: list[Trial] = []
    if not problems:
        cells = []
        for m in models:
            for d in datasets:
                if fp or "FP32" in bits:  # the full-precision baseline: one cell per model and dataset
                    cells.append(("fp", m, d, "FP32", "common"))
                cells += [(e, m, d, b, r) for b in bits if b != "FP32" for e in estimators for r in recipes]
        for e, m, d, b, r in cells:
            for s in seeds:
                w, a = BITS[b]
                cfg: dict[str, Any] = {**defaults}
                for ov_key, ov in overrides.items():  # in file order; a key matches when all its parts do
                    if isinstance(ov, dict) and set(str(ov_key).split("/")) <= {e, m, d, b, r}:
                        cfg.update(ov)
                cfg.update({"estimator": "ste" if e == "fp" else e, "model": m, "dataset": d, "w_bits": w,
                            "a_bits": a, "recipe": r, "seed": s})
                if data_root:
                    cfg["data_root"] = data_root
                t = Trial(name, e, m, d, b, r, s, cfg)
                try:
                    rc = resolve_config(cfg)
                    from bench.train import plan_stages

                    plan_stages(rc, None if e == "fp" else get_estimator_class(rc.estimator)(**rc.estimator_hparams))
                    t.resolved = rc.to_dict()
                    t.key = trial_key(name, t.resolved)
                except BinbenchError as exc:
                    problems.append(f"{where}: grid cell {t.label}: {exc}")
                trials.append(t)
        if not trials and not problems:
            problems.append(f"{where}: the grid is empty (no estimator x model x dataset x bits x seed)")
    if check_data and not problems:
        problems += _missing_data(where, {t.dataset for t in trials}, data_root)
    if problems:
        raise SuiteError(where, problems)
    return Suite(name, where, str(raw.get("description", "")), trials, search, raw)


def _check_search(where: str, search: Any) -> list[str]:
    if not isinstance(search, dict):
        return [f"{where}: 'search' must be a mapping with keys {', '.join(sorted(SEARCH_KEYS))}"]
    out = [f"{where}: search: unknown key {k!r}{did_you_mean(str(k), SEARCH_KEYS)}" for k in search
           if k not in SEARCH_KEYS]
    space = search.get("space")
    if not isinstance(space, dict) or not space:
        kinds = ", ".join(sorted(SPACE_KINDS))
        out.append(f"{where}: search.space must map run-config keys to one of {{{kinds}: ...}}")
        return out
    for k, spec in space.items():
        if k not in FIELDS:
            out.append(f"{where}: search.space: unknown run-config key {k!r}{did_you_mean(str(k), FIELDS)}")
        if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SPACE_KINDS):
            out.append(f"{where}: search.space.{k} must be one of {{{', '.join(sorted(SPACE_KINDS))}: [...]}}")
        out += [f"{where}: {p}" for p in check_space(k, spec)]
    if search.get("mode", "max") not in ("max", "min"):
        out.append(f"{where}: search.mode must be max or min")
    ns = search.get("num_samples", 1)
    if not isinstance(ns, int) or ns < 1:
        out.append(f"{where}: search.num_samples must be a positive integer")
    return out


def _missing_data(where: str, datasets: set[str], data_root: str | None) -> list[str]:
    from bench.data import dataset_source
    from bench.errors import DataNotFoundError

    out = []
    for name in sorted(datasets):
        try:  # finds what a trial would load (torchvision's files or an image-folder copy), decodes nothing
            dataset_source(name, data_root)
        except DataNotFoundError as exc:
            out.append(f"{where}: {exc}")
    return out


def estimate_cost(suite: Suite) -> dict[str, Any]:
    """A rough cost: multiply-accumulates of the models x samples x epochs, turned into hours at nominal rates."""
    from bench.data import get_dataset

    cpu_flops, gpu_flops = 30e9, 10e12  # sustained training FLOP/s: 2-core CPU, one modern GPU (nominal)
    total = 0.0
    cache: dict[tuple, float] = {}
    for t in suite.trials:
        rc = RunConfig(**{k: v for k, v in t.resolved.items()})
        ds = get_dataset(t.dataset)
        key = (t.model, t.dataset, t.bits, json.dumps(rc.model_args, sort_keys=True))
        if key not in cache:
            cache[key] = _macs(rc, ds)
        n_train = {"digits": 1437, "mnist": 60000, "fashion-mnist": 60000, "cifar10": 50000, "cifar100": 50000,
                   "tiny-imagenet": 100000, "imagenet": 1281167}.get(t.dataset, 50000)
        n_train = min(n_train, rc.train_subset or n_train)
        evals = 1 + (rc.estimator_hparams.get("samples", 40) if t.estimator == "vispa" else 0)
        n_test = {"imagenet": 50000, "tiny-imagenet": 10000, "digits": 360}.get(t.dataset, 10000)
        total += cache[key] * 2 * (3 * n_train + evals * n_test) * (rc.epochs or 1)
    cpu_h, gpu_h = total / cpu_flops / 3600, total / gpu_flops / 3600
    needs_gpu = cpu_h > 24
    return {"trials": len(suite.trials), "flop": total, "cpu_hours": cpu_h, "gpu_hours": gpu_h, "needs_gpu": needs_gpu,
            "datasets": sorted({t.dataset for t in suite.trials})}


def _macs(rc: RunConfig, ds) -> float:
    import torch
    from torch import nn

    from bench.layers import BinarySpec
    from bench.models import create_model

    model = create_model(rc.model, BinarySpec(), ds.num_classes, ds.shape, **rc.model_args).eval()
    macs = [0.0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            macs[0] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, nn.Linear):
            macs[0] += out.numel() * mod.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, *ds.shape))
    for h in hs:
        h.remove()
    return macs[0]
