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
      my_sign: {estimator_hparams: {k: 8}}     # match every '/'-separated part of the key
      convnet: {epochs: 2}
      my_sign/convnet: {epochs: 4}
    search:                      # optional: Ray Tune search with ASHA, same budget per grid cell
      metric: test_top1
      mode: max
      num_samples: 4
      space: {lr: {loguniform: [0.01, 0.5]}}
      asha: {grace_period: 1, reduction_factor: 2}   # optional: without it every sampled point runs to the end
    budgets: [0.25, 0.5, 1]      # optional: every trial again at these shares of its epochs (budget curves)

With a search, --resume skips a whole grid cell once any of its sampled points finished.

With ``budgets``, each trial runs once per budget b as a trial of its own: epochs = max(1, round(b x epochs)),
its schedule and stage plan resolved for that epoch count (a full run at the smaller budget, not a truncated
longer one), its own key, its budget in ``Trial.budget`` (the ``binbench.budget`` tag of its run). The report
draws accuracy against budget and the rank agreement of each budget with the largest (Kendall's tau).

What a suite file may hold, checked before anything is expanded or started (each breach is one line):

* its ``name`` (default: the file's stem) names the results folder, the MLflow experiment and Ray's folder,
  so it is letters, digits, ``-``, ``_`` and ``.`` (not first), at most 100 characters;
* a suite's identity is its name: a file that is not the shipped ``suites/<name>.yaml`` but carries a shipped
  suite's name is refused, since its runs would merge into that suite's results and report (rename it);
* a key given twice in one mapping (``grid:`` twice, ``seeds:`` twice) is an error naming the key and lines,
  not a silent "last one wins";
* YAML aliases may not expand the document past ``MAX_NODES`` nodes (billion laughs) nor nest deeper than
  ``MAX_DEPTH``; the file is UTF-8 text of at most ``MAX_BYTES``;
* the number of trials (grid cells x seeds x sampled points) is computed before anything is expanded and
  refused past ``MAX_TRIALS`` unless the caller raises the bound (``--max-trials N``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.config import BITS, FIELDS, check_keys, check_space
from bench.errors import BinbenchError, did_you_mean
from bench.recipes import RECIPES
from bench.spec import FP, RunIdentity, RunSpec, resolve

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
#: run-config keys a suite sets through its grid, not its defaults
GRID_CONFIG_KEYS = ("estimator", "model", "dataset", "seed", "recipe", "w_bits", "a_bits")
TOP_KEYS = {"name", "description", "grid", "fp_baseline", "defaults", "overrides", "search", "notes", "budgets"}
GRID_KEYS = {"estimators", "models", "datasets", "bits", "recipes", "seeds"}
SEARCH_KEYS = {"metric", "mode", "num_samples", "space", "asha"}
SPACE_KINDS = {"loguniform", "uniform", "choice", "randint", "grid"}
#: a suite name is a file-name component: no separators, no leading dot, no '..'
NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
MAX_TRIALS = 10_000  # trials a suite may expand to without --max-trials
MAX_NODES = 100_000  # YAML nodes a suite file may expand to, aliases expanded
MAX_DEPTH = 32  # nesting of YAML collections
MAX_BYTES = 1 << 20  # size of a suite file


class SuiteError(BinbenchError):
    """One or more problems in a suite file, one line each."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        head = f"suite {path} has {len(problems)} problem{'s' if len(problems) > 1 else ''}"
        if len(problems) == 1:  # one line
            super().__init__(f"{head}: {problems[0]}")
        else:
            super().__init__(head + ":\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Trial:
    """One cell of the grid with one seed, resolved: what the driver hands an executor and the executor the trial
    body (a search runs it at several sampled points)."""

    suite: str
    estimator: str  # "fp" for the full-precision baseline
    model: str
    dataset: str
    bits: str
    recipe: str
    seed: int
    config: dict[str, Any]  # user-level RunConfig values
    spec: RunSpec  # resolved once, when the suite is expanded
    budget: float | None = None  # the share of the cell's epochs this trial runs (suites with ``budgets``)

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.spec.key, self.suite, self.estimator, self.model, self.dataset, self.bits,
                           self.recipe, self.seed, self.budget)

    @property
    def key(self) -> str:
        """The trial's identity (its spec's key): checkpoint folder, MLflow tag, what a report counts once."""
        return self.spec.key

    @property
    def cell(self) -> str:
        return self.identity.cell

    @property
    def label(self) -> str:
        return self.identity.label

    def with_spec(self, spec: RunSpec) -> Trial:
        """The same trial with execution settings (or a search point's values) applied to its spec."""
        return dataclasses.replace(self, spec=spec)


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    description: str
    trials: list[Trial]
    search: dict[str, Any] | None


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def find_suite(name_or_path: str) -> Path:
    """The suite file: an existing file, else a shipped suite's name, else a clear error.

    A shipped name wins over a folder of that name in the working directory (``binbench report smoke`` run
    where ``smoke/`` holds that suite's results)."""
    p = Path(name_or_path)
    if p.is_file():
        return p.resolve()
    shipped = SUITES_DIR / f"{name_or_path}.yaml"
    if NAME_RE.fullmatch(name_or_path) and shipped.is_file():
        return shipped
    if p.is_dir():
        raise BinbenchError(f"suite {p} is a folder, not a suite file: pass the .yaml file in it, or a suite name "
                            f"({', '.join(list_suites())})")
    if p.exists():
        raise BinbenchError(f"suite {p} is not a regular file: pass a .yaml file or a suite name")
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        raise BinbenchError(f"suite file {p} does not exist")
    raise BinbenchError(f"unknown suite {name_or_path!r}{did_you_mean(name_or_path, list_suites())}; "
                        f"`binbench suite list` shows {', '.join(list_suites())}, or pass a path to a .yaml file")


def inside(root: str | Path, *parts: str) -> Path:
    """``root/parts...``, refused (one line) unless it resolves to a path inside ``root``."""
    base = Path(root).resolve()
    out = base.joinpath(*parts).resolve()
    if out != base and base not in out.parents:
        raise BinbenchError(f"{Path(root).joinpath(*parts)} leads outside {root}: use a suite name of letters, "
                            "digits, '-', '_' and '.'")
    return out


class _SuiteLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and nesting deeper than MAX_DEPTH while composing."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key_node.value!r} appears twice in one mapping (first at line "
                        f"{seen[ident].line + 1}); keep one, merging their values", key_node.start_mark)
                seen[ident] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _check_expansion(node) -> None:
    """Refuse a node graph whose aliases expand it past MAX_NODES nodes or MAX_DEPTH levels, or loop."""
    memo: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)
    on_path: set[int] = set()

    def walk(n, depth: int) -> tuple[int, int]:
        key = id(n)
        if key in memo:
            size, height = memo[key]
        else:
            if key in on_path:
                raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                                  n.start_mark)
            on_path.add(key)
            kids = ([c for kv in n.value for c in kv] if isinstance(n, yaml.MappingNode)
                    else list(n.value) if isinstance(n, yaml.SequenceNode) else [])
            size, height = 1, 1
            for c in kids:
                cs, ch = walk(c, depth + 1)
                size, height = size + cs, max(height, ch + 1)
                if size > MAX_NODES:
                    break
            on_path.discard(key)
            memo[key] = (size, height)
        if size > MAX_NODES:
            raise yaml.composer.ComposerError(None, None, f"its aliases expand it past {MAX_NODES:,} values "
                                              "(an alias bomb?); write the values out", n.start_mark)
        if depth + height > MAX_DEPTH + 1:
            raise yaml.composer.ComposerError(None, None, f"its aliases nest it deeper than {MAX_DEPTH} levels",
                                              n.start_mark)
        return size, height

    walk(node, 0)


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _short(value: Any, n: int = 80) -> str:
    """repr of a value from the file, cut to ``n`` characters (it may be large)."""
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict = n, n, 8, 8
    return _one_line(r.repr(value))[:n]


def read_suite_file(path: Path) -> Any:
    """The YAML document of a suite file, through the checks above; SuiteError (one line) when it breaks one."""
    where = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise SuiteError(where, [f"the file is {size:,} bytes; a suite file is at most {MAX_BYTES:,}: is this "
                                     "the right file?"])
        data = path.read_bytes()
    except OSError as exc:
        raise SuiteError(where, [f"cannot read it ({exc.strerror or exc}): make it readable"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SuiteError(where, [f"not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}): save it as "
                                 "UTF-8"]) from None
    loader = None
    try:
        loader = _SuiteLoader(text)
        node = loader.get_single_node()
        if node is None:
            return {}
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise SuiteError(where, [f"not valid YAML{at}: {_one_line(getattr(exc, 'problem', None) or exc)}"]) \
            from None
    except RecursionError:
        raise SuiteError(where, [f"nested too deeply (at most {MAX_DEPTH} levels)"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def suite_name(path: Path, raw: Any) -> tuple[str, list[str]]:
    """(the suite's name, problems with it): a safe file-name component, and not a shipped suite's name unless
    this is that shipped file."""
    where = str(path)
    name = raw.get("name", path.stem) if isinstance(raw, dict) else path.stem
    if not isinstance(name, str):
        return path.stem, [f"{where}: 'name' must be a string, got a {type(name).__name__}"]
    if not NAME_RE.fullmatch(name) or ".." in name:
        shown = name if len(name) <= 60 else name[:60] + "..."
        return name, [f"{where}: name {shown!r} is not a valid suite name: it names folders, so use letters, digits, "
                      "'-', '_' and '.' (not first), at most 100 characters"
                      + ("" if isinstance(raw, dict) and "name" in raw else "; add a 'name:' key")]
    shipped = SUITES_DIR / f"{name}.yaml"
    if shipped.is_file() and shipped.resolve() != Path(path).resolve():
        return name, [f"{where}: name {name!r} is the name of the shipped suite {shipped}; its runs would merge into "
                      f"that suite's results and report: give this suite another name (e.g. name: {name}-mine)"]
    return name, []


def suite_identity(name_or_path: str) -> tuple[Path, str]:
    """(file, name) of a suite, checked as ``load_suite`` checks them, without validating the grid: what a
    report of its results needs."""
    path = find_suite(name_or_path)
    raw = read_suite_file(path)
    name, problems = suite_name(path, raw)
    if problems:
        raise SuiteError(str(path), problems)
    return path, name


def count_trials(n_models: int, n_datasets: int, n_estimators: int, bits: list[str], n_recipes: int, n_seeds: int,
                 fp: bool, search: Any) -> int:
    """How many trials the grid (and search) expands to, without expanding it."""
    per_pair = (1 if fp or "FP32" in bits else 0) + sum(b != "FP32" for b in bits) * n_estimators * n_recipes
    n = n_models * n_datasets * per_pair * n_seeds
    return n * search_points(search)


def search_points(search: Any) -> int:
    """How many points a search runs per grid trial: its samples x every grid-searched value of its space; 1
    without a search. Read before validation too, so anything malformed counts as 1."""
    if not isinstance(search, dict):
        return 1
    ns = search.get("num_samples", 1)
    n = ns if isinstance(ns, int) and ns > 0 else 1
    space = search.get("space")
    for spec in (space.values() if isinstance(space, dict) else []):
        if isinstance(spec, dict) and isinstance(spec.get("grid"), list):
            n *= max(1, len(spec["grid"]))
    return n


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


@dataclass
class _Grid:
    """What a suite file asks for, each part checked for form and names (``parse_suite``)."""

    name: str
    description: str
    estimators: list[str]
    models: list[str]
    datasets: list[str]
    bits: list[str]
    recipes: list[str]
    seeds: list[int]
    fp: bool
    defaults: dict[str, Any]
    overrides: dict[str, Any]
    search: dict[str, Any] | None
    budgets: tuple[float, ...] = ()


def load_suite(name_or_path: str, data_root: str | None = None, check_data: bool = False,
               max_trials: int | None = None) -> Suite:
    """Read, parse, validate and expand a suite; raise SuiteError listing every problem.

    ``max_trials`` (default MAX_TRIALS) bounds the trials the suite may expand to; the count is computed
    before anything is expanded."""
    path = find_suite(name_or_path)
    where = str(path)
    raw = read_suite_file(path) or {}
    if not isinstance(raw, dict):
        raise SuiteError(where, ["the top level must be a mapping with keys: " + ", ".join(sorted(TOP_KEYS))])
    grid, problems = parse_suite(path, raw)
    problems += validate_suite(where, grid, MAX_TRIALS if max_trials is None else max_trials)
    trials: list[Trial] = []
    if not problems:
        trials, problems = expand_suite(where, grid, data_root)
    if problems:
        raise SuiteError(where, problems)
    suite = Suite(grid.name, where, grid.description, trials, grid.search)
    if check_data and (problems := missing_data(suite)):
        raise SuiteError(where, problems)
    return suite


def parse_suite(path: Path, raw: dict[str, Any]) -> tuple[_Grid, list[str]]:
    """The file's parts, each checked for form and known names; (grid, problems).

    Checked by hand rather than by a pydantic model: every problem of a file is collected and reported together,
    one line each naming the file, the key and what would be valid (names from registries plugins extend); see
    the comment above ``bench.config.check_type`` for what pydantic was measured to cost and say instead."""
    from bench.data import DATASETS
    from bench.estimator import ESTIMATORS
    from bench.models import MODELS

    where = str(path)
    problems = [f"{where}: unknown key {k!r}{did_you_mean(str(k), TOP_KEYS)}; valid: {', '.join(sorted(TOP_KEYS))}"
                for k in raw if k not in TOP_KEYS]
    name, name_problems = suite_name(path, raw)
    problems += name_problems
    grid = raw.get("grid")
    if not isinstance(grid, dict):
        problems.append(f"{where}: 'grid' must be a mapping with keys {', '.join(sorted(GRID_KEYS))}")
        grid = {}
    problems += [f"{where}: grid: unknown key {k!r}{did_you_mean(str(k), GRID_KEYS)}; valid: "
                 f"{', '.join(sorted(GRID_KEYS))}" for k in grid if k not in GRID_KEYS]
    fp = raw.get("fp_baseline", False)
    if not isinstance(fp, bool):
        problems.append(f"{where}: 'fp_baseline' must be true or false, got {_short(fp)}")
        fp = False
    seeds = _as_list(grid.get("seeds", [0]))
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        problems.append(f"{where}: grid.seeds must be a list of integers, got {_short(grid.get('seeds'))}")
        seeds = []
    parsed = _Grid(
        name, str(raw.get("description", "")), _grid_names(where, grid, "estimators", ESTIMATORS, problems),
        _grid_names(where, grid, "models", MODELS, problems), _grid_names(where, grid, "datasets", DATASETS, problems),
        _grid_choices(where, grid, "bits", list(BITS), ["W1A1"], problems),
        _grid_choices(where, grid, "recipes", list(RECIPES), ["common"], problems), seeds, fp,
        _parse_defaults(where, raw.get("defaults", {}) or {}, problems),
        _parse_overrides(where, raw.get("overrides", {}) or {}, problems), raw.get("search"))
    if parsed.search is not None:
        problems += _check_search(where, parsed.search)
    parsed.budgets = _parse_budgets(where, raw.get("budgets"), problems)
    return parsed, problems


def _parse_budgets(where: str, value: Any, problems: list[str]) -> tuple[float, ...]:
    """``budgets``: distinct shares of the epochs in (0, 1]; none when the key is absent."""
    if value is None:
        return ()
    items = _as_list(value)
    if not items or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 < b <= 1 for b in items):
        problems.append(f"{where}: budgets must be a list of shares of the epochs in (0, 1], e.g. [0.25, 0.5, 1]; "
                        f"got {_short(value)}")
        return ()
    if len(set(items)) < len(items):
        problems.append(f"{where}: budgets lists a share twice: {_short(value)}")
    return tuple(sorted(set(float(b) for b in items)))


def _grid_names(where: str, grid: dict[str, Any], key: str, registry, problems: list[str]) -> list[str]:
    """A grid list of registered names ('all' estimators: every registered weight estimator)."""
    from bench.estimator import get_estimator_class

    value = grid.get(key)
    if value is None:
        problems.append(f"{where}: grid.{key} is missing; valid: {', '.join(registry.names())}")
        return []
    if value == "all" and key == "estimators":
        return [n for n in registry.names() if "weight" in get_estimator_class(n).kinds and not n.startswith("test_")]
    out = []
    for v in _as_list(value):
        if not isinstance(v, str) or v not in registry:
            shown = _short(v)
            problems.append(f"{where}: grid.{key}: unknown {registry.kind} {shown}"
                            f"{did_you_mean(shown.strip(chr(39)), registry)}; valid: {', '.join(registry.names())}")
        else:
            out.append(v)
    return out


def _grid_choices(where: str, grid: dict[str, Any], key: str, valid: list[str], default: list[str],
                  problems: list[str]) -> list[str]:
    out = []
    for v in _as_list(grid.get(key, default)):
        if not isinstance(v, str) or v not in valid:
            problems.append(f"{where}: grid.{key}: unknown {_short(v)}; valid: {', '.join(valid)}")
        else:
            out.append(v)
    return out


def _parse_defaults(where: str, defaults: Any, problems: list[str]) -> dict[str, Any]:
    if not isinstance(defaults, dict):
        problems.append(f"{where}: 'defaults' must be a mapping of run-config keys")
        return {}
    for k, v in defaults.items():
        if k in GRID_CONFIG_KEYS:
            problems.append(f"{where}: defaults.{k}: set it in 'grid', not in 'defaults'")
        elif k not in FIELDS:
            problems.append(f"{where}: defaults: unknown run-config key {k!r}{did_you_mean(str(k), FIELDS)}")
        else:
            try:
                check_keys({k: v})
            except BinbenchError as exc:
                problems.append(f"{where}: defaults.{k}: {exc}")
    return defaults


def _parse_overrides(where: str, overrides: Any, problems: list[str]) -> dict[str, Any]:
    from bench.data import DATASETS
    from bench.estimator import ESTIMATORS
    from bench.models import MODELS

    if not isinstance(overrides, dict):
        problems.append(f"{where}: 'overrides' must map estimator names to run-config keys")
        return {}
    known = set(ESTIMATORS.names()) | set(MODELS.names()) | set(DATASETS.names()) | set(BITS) | {FP, *RECIPES}
    for key, ov in overrides.items():
        for part in str(key).split("/"):
            if part not in known:
                problems.append(f"{where}: overrides: {key!r}: {part!r} is no estimator, model, dataset, bits or "
                                f"recipe name{did_you_mean(part, known)}")
        if not isinstance(ov, dict):
            problems.append(f"{where}: overrides.{key} must be a mapping of run-config keys")
            continue
        problems += [f"{where}: overrides.{key}: unknown run-config key {k!r}{did_you_mean(str(k), FIELDS)}"
                     for k in ov if k not in FIELDS]
    return overrides


def validate_suite(where: str, g: _Grid, max_trials: int) -> list[str]:
    """Checks of the whole: the number of trials, before anything is expanded."""
    n = count_trials(len(g.models), len(g.datasets), len(g.estimators), g.bits, len(g.recipes), len(g.seeds), g.fp,
                     g.search)
    n *= max(1, len(g.budgets))
    if n > max_trials:
        return [f"{where}: the grid expands to {n:,} trials, more than the limit of {max_trials:,}: shrink the grid "
                f"(or search.num_samples), or pass --max-trials {n} if you mean it"]
    return []


def expand_suite(where: str, g: _Grid, data_root: str | None) -> tuple[list[Trial], list[str]]:
    """Every (cell, seed) as a trial with its resolved spec; a cell that does not resolve is a problem."""
    from bench.estimator import reference_estimator

    cells = []
    for m in g.models:
        for d in g.datasets:
            if g.fp or "FP32" in g.bits:  # the full-precision baseline: one cell per model and dataset
                cells.append((FP, m, d, "FP32", "common"))
            cells += [(e, m, d, b, r) for b in g.bits if b != "FP32" for e in g.estimators for r in g.recipes]
    trials, problems = [], []
    for e, m, d, b, r in cells:
        for seed in g.seeds:
            w, a = BITS[b]
            cfg: dict[str, Any] = {**g.defaults}
            for ov_key, ov in g.overrides.items():  # in file order; a key matches when all its parts do
                if isinstance(ov, dict) and set(str(ov_key).split("/")) <= {e, m, d, b, r}:
                    cfg.update(ov)
            cfg.update({"estimator": reference_estimator() if e == FP else e, "model": m, "dataset": d,
                        "w_bits": w, "a_bits": a, "recipe": r, "seed": seed})
            if data_root:
                cfg["data_root"] = data_root
            try:
                trials.append(Trial(g.name, e, m, d, b, r, seed, cfg, resolve(cfg, g.name)))
            except BinbenchError as exc:
                problems.append(f"{where}: grid cell {RunIdentity('', g.name, e, m, d, b, r, seed).label}: {exc}")
                continue
            trials += _at_budgets(where, trials.pop(), g.budgets, problems) if g.budgets else []
    if not trials and not problems:
        problems.append(f"{where}: the grid is empty (no estimator x model x dataset x bits x seed)")
    return trials, list(dict.fromkeys(problems))


def _at_budgets(where: str, full: Trial, budgets: tuple[float, ...], problems: list[str]) -> list[Trial]:
    """``full`` once per budget: epochs = max(1, round(budget x its resolved epochs)), resolved again so that the
    schedule and the stage plan are those of the shorter run; two budgets that round to the same epochs, or a
    budget too short for the estimator's stages, are problems."""
    epochs = full.spec.config.epochs
    out, seen = [], {}
    for budget in budgets:
        n = max(1, round(budget * epochs))
        if n in seen:
            problems.append(f"{where}: budgets {seen[n]:g} and {budget:g} both give {n} epoch(s) of {epochs}: drop "
                            "one or raise the epochs")  # the same line for every trial it hits: said once
            continue
        seen[n] = budget
        cfg = {**full.config, "epochs": n}
        try:
            out.append(dataclasses.replace(full, config=cfg, spec=resolve(cfg, full.suite), budget=budget))
        except BinbenchError as exc:
            label = dataclasses.replace(full.identity, budget=budget).label
            problems.append(f"{where}: grid cell {label} ({n} epoch(s)): {exc}")
    return out


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


def missing_data(suite: Suite) -> list[str]:
    """Data the trials would not find where they will read it, one line per dataset and data root: a data root
    that is no folder, or a dataset not in it (a trial allowed to download is not checked). Finds the files,
    decodes nothing: what ``suite show`` prints and ``suite run`` refuses before anything starts."""
    from bench.data import dataset_source
    from bench.errors import DataNotFoundError

    out: list[str] = []
    seen: set[tuple[str, str | None]] = set()
    for t in suite.trials:
        root = t.spec.config.data_root
        if (t.dataset, root) in seen:
            continue
        seen.add((t.dataset, root))
        path = Path(root).expanduser().resolve() if root else None
        if not t.spec.config.download:
            try:  # its message names the folder looked in and how to get the files
                dataset_source(t.dataset, str(path) if path else None)
            except DataNotFoundError as exc:
                out.append(f"{suite.path}: {exc}")
                continue
        if path is not None and not path.is_dir():  # even where the data is embedded or downloaded: a typo
            out.append(f"{suite.path}: data_root {root!r} of trial {t.label} ({path}) is not a folder: fix "
                       "data_root in the suite file or pass --data-root")
    return out


def estimate_cost(suite: Suite) -> dict[str, Any]:
    """A rough cost: multiply-accumulates of the models x samples x epochs, turned into hours at nominal rates."""
    cpu_flops, gpu_flops = 30e9, 10e12  # sustained training FLOP/s: 2-core CPU, one modern GPU (nominal)
    cache: dict[tuple, float] = {}
    total = sum(trial_flop(t, cache) for t in suite.trials)
    cpu_h, gpu_h = total / cpu_flops / 3600, total / gpu_flops / 3600
    needs_gpu = cpu_h > 24
    return {"trials": len(suite.trials), "flop": total, "cpu_hours": cpu_h, "gpu_hours": gpu_h, "needs_gpu": needs_gpu,
            "datasets": sorted({t.dataset for t in suite.trials})}


def trial_flop(t: Trial, cache: dict[tuple, float] | None = None) -> float:
    """A trial's rough training cost in FLOP: its network's multiply-accumulates x 2 x (3 passes per training
    sample + its estimator's evaluation passes per test sample) x epochs. ``cache``: MACs per network, shared by
    the calls of one caller."""
    from bench.data import get_dataset
    from bench.estimator import get_estimator_class

    cache = {} if cache is None else cache
    rc = t.spec.config
    ds = get_dataset(t.dataset)
    key = (t.model, t.dataset, t.bits, json.dumps(rc.model_args, sort_keys=True))
    if key not in cache:
        cache[key] = _macs(rc, ds)
    n_train = min(ds.train_images or 50000, rc.train_subset or ds.train_images or 50000)
    evals = get_estimator_class(rc.estimator).eval_cost(rc.estimator_hparams) if rc.w_bits == 1 else 1
    return cache[key] * 2 * (3 * n_train + evals * (ds.test_images or 10000)) * rc.epochs


def _macs(rc, ds) -> float:
    """MACs of one forward pass of the trial's network on one input (``bench.models.count_macs``)."""
    from bench.layers import BinarySpec
    from bench.models import count_macs, create_model

    model = create_model(rc.model, BinarySpec(), ds.num_classes, ds.shape, **rc.model_args)
    return count_macs(model, tuple(ds.shape))[""]
