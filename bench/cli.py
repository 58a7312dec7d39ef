"""The ``binbench`` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from bench.errors import BinbenchError
from bench.words import RECIPES


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def cmd_list(args: argparse.Namespace) -> int:
    """Listings from ``bench.listing``'s cache: no torch import unless a source or a plugin changed."""
    import fnmatch

    from bench.listing import cached_listing

    pattern = args.pattern or "*"
    rows = cached_listing(args.what, _LISTINGS[args.what])
    shown = [r for r in rows if fnmatch.fnmatchcase(r["name"], pattern)]
    if not shown:
        raise BinbenchError(f"no {args.what[:-1]} matches {pattern!r}; `binbench list {args.what}` shows all "
                            f"{len(rows)}")
    width = max(len(r["name"]) for r in shown) if args.what == "estimators" else 0
    for r in shown:
        if args.what == "estimators":
            print(f"{r['name']:<{max(width, 4)}}  {r['role']:<7}  {r['source']:<28}  {r['summary']}")
        elif args.what == "models":
            print(f"{r['name']:<10}  {r['source']:<10}  {r['summary']}")
        else:
            print(f"{r['name']:<14} {r['classes']:>5} classes  {r['shape']:>9}  default {r['epochs']} epochs, "
                  f"batch {r['batch']}")
    for err in rows and rows[0].get("plugin_errors", []):
        print(f"warning: {err}", file=sys.stderr)
    return 0


def _estimator_rows() -> list[dict[str, Any]]:
    from bench.estimator import ESTIMATORS

    rows = [{"name": n, "role": "control" if ESTIMATORS.get(n).role == "control" else "method",
             "source": ESTIMATORS.entry(n).source, "summary": doc_summary(ESTIMATORS.get(n).__doc__)}
            for n in ESTIMATORS.names()]
    if rows and ESTIMATORS.plugin_errors:
        rows[0]["plugin_errors"] = list(ESTIMATORS.plugin_errors)
    return rows


def _model_rows() -> list[dict[str, Any]]:
    from bench.models import MODELS

    return [{"name": n, "source": MODELS.entry(n).source, "summary": doc_summary(MODELS.get(n).__doc__)}
            for n in MODELS.names()]


def _dataset_rows() -> list[dict[str, Any]]:
    from bench.data import DATASETS

    return [{"name": n, "classes": d.num_classes, "shape": "x".join(map(str, d.shape)), "epochs": d.default_epochs,
             "batch": d.default_batch_size} for n in DATASETS.names() for d in [DATASETS.get(n)]]


_LISTINGS = {"estimators": _estimator_rows, "models": _model_rows, "datasets": _dataset_rows}


def shorten(text: str, width: int) -> str:
    """``text`` (whitespace collapsed) on one line of at most ``width`` characters, cut at a word boundary with an
    ellipsis."""
    import textwrap

    return textwrap.shorten(text, width, placeholder=" …")


def doc_summary(doc: str | None, width: int = 110) -> str:
    """A docstring's first paragraph on one line, cut at a word boundary with an ellipsis when longer than
    ``width`` (its first line alone may stop mid-sentence)."""
    first = (doc or "").strip().split("\n\n")[0]
    return shorten(first, width) if first else ""


def _flat_values(values: Any) -> list[tuple[str, Any]]:
    """Rule values with dict values opened one level: ('estimator_hparams.t_min', 0.1)."""
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += [(f"{key}.{sub}", v) for sub, v in value.items()]
        else:
            out.append((key, value))
    return out


def _print_recipes(recipes: dict[str, list[Any]]) -> None:
    """Both recipes' rules; every published value with its source beside it, extrapolated ones marked."""
    from bench.recipes import NO_PUBLISHED, describe_match

    print("\nrecipes (rules: when the run matches, the values apply; later rules win):")
    for name, rules in recipes.items():
        if name == "published" and not rules:
            print(f"  published: none: {NO_PUBLISHED}")
            continue
        if name == "common":
            print(f"  common (source: {rules[0].source if rules else '-'}):")
        else:
            print(f"  {name} (each value with its source; [extrapolated]: the source gives it for another setting):")
        for rule in rules:
            scope = rule.scope()
            print(f"    [{describe_match(rule.match)}]" + (f"  {scope}" if scope else ""))
            if rule.extrapolated:
                mark = "  [extrapolated]"
            elif rule.published_for is not None:
                mark = "  [extrapolated outside the settings above]"
            else:
                mark = ""
            for key, value in _flat_values(rule.values):
                print(f"      {key} = {value!r}" + (f"  <- {rule.source}{mark}" if name != "common" else ""))


def cmd_show(args: argparse.Namespace) -> int:
    from bench.estimator import estimator_info, list_estimators

    if args.what == "estimators":
        names = list_estimators(args.name or "*")
        _check_plot_path(args.plot)
        if args.plot:
            from bench.plots import plot_estimators

            plot_estimators(names, args.plot)
            print(f"wrote {args.plot}")
        else:
            for n in names:
                print(n)
        return 0
    if not args.name:
        raise BinbenchError("binbench show estimator needs a NAME (see `binbench list estimators`)")
    _check_plot_path(args.plot)
    from bench.docmath import to_text

    info = estimator_info(args.name)
    print(f"{info['name']}  ({info['class']}, {info['source']})\n")
    print(to_text(info["doc"]))  # its LaTeX as plain text
    undocumented = {k: v for k, v in info["hparams"].items() if k not in info["doc"]}
    if undocumented:  # the docstring's own "Hyperparameters:" section lists the others with their meaning
        print("\nhyperparameters (not in the docstring):")
        for k, v in undocumented.items():
            print(f"  {k} = {v!r}")
    print(f"\nbinarizes: {', '.join(info['kinds'])}; native scaling: {info['native_scaling']}; native activation "
          f"estimator: {info['native_activation']}; stages: {', '.join(info['stages'])}; "
          f"eval modes: {', '.join(info['eval_modes'])}")
    from bench.recipes import recipe_table

    _print_recipes(recipe_table(args.name))
    if info.get("file"):
        print(f"\nsource: {info['file']}")
    if args.plot:
        from bench.plots import plot_estimators

        plot_estimators([args.name], args.plot)
        print(f"wrote {args.plot}")
    return 0


def _check_plot_path(path: str | None) -> None:
    """--plot FILE: a format matplotlib writes, into a folder that exists, before anything is drawn."""
    if not path:
        return
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in formats:
        raise BinbenchError(f"--plot {path}: {'.' + ext if ext else 'no'} extension; matplotlib writes "
                            f"{', '.join('.' + f for f in sorted(formats))} (e.g. --plot estimators.png)")
    if Path(path).is_dir():
        raise BinbenchError(f"--plot {path} is a folder: give a file name such as {Path(path) / 'estimators.png'}")
    if not Path(path).resolve().parent.is_dir():
        raise BinbenchError(f"--plot {path}: the folder {Path(path).resolve().parent} does not exist")


def cmd_run(args: argparse.Namespace) -> int:
    from bench.config import parse_set
    from bench.progress import Reporter
    from bench.train import train

    values: dict[str, Any] = parse_set(args.set or [])
    for key in ("estimator", "model", "dataset", "epochs", "seed", "recipe", "data_root", "checkpoint_dir"):
        v = getattr(args, key)
        if v is not None:
            values[key] = v
    if args.bits is not None:  # --bits "" is a mistake, not the default
        from bench.config import BITS

        bits = args.bits.strip().upper()
        bits = {"W32A32": "FP32", "FP": "FP32"}.get(bits, bits)  # the other spellings people use
        if bits not in BITS:
            raise BinbenchError(f"--bits must be {', '.join(list(BITS)[:-1])} or {list(BITS)[-1]}, got {args.bits!r}")
        values["w_bits"], values["a_bits"] = BITS[bits]
    if "model" not in values:
        # without -m: the all-binary MLP the suites train (first and last layers binary too); the model's own default
        # (FP first/last, the papers' convention for CIFAR/ImageNet nets) hides the estimators' differences on digits
        values["model"] = "mlp"
        values["model_args"] = {"binarize_first_last": True, **(values.get("model_args") or {})}
    if args.download:
        values["download"] = True
    if args.resume:
        values["resume"] = True
        if args.checkpoint_dir and not (Path(args.checkpoint_dir) / "last.pt").is_file():
            print(f"binbench: --resume: nothing to resume in {args.checkpoint_dir} (no last.pt): training from "
                  "scratch", file=sys.stderr)
    if args.dry_run:
        return _dry_run(values, args.json)
    from bench.spec import resolve

    spec = resolve(values)  # a config error stops here, before a run is recorded
    uri = None if args.no_track else _run_store(args.tracking_uri, spec)
    with contextlib.ExitStack() as stack:
        tracked = None
        if uri is not None:
            from bench.track.run import single_run

            tracked = stack.enter_context(single_run(uri, spec))
        result = train(spec, reporter=Reporter(enabled=not args.json),
                       callbacks=[tracked.on_epoch] if tracked else None,
                       stage_hooks=[tracked.final_model] if tracked else None)
        if tracked is not None:
            tracked.finish(result)
    out = result.to_dict()
    if tracked is not None:
        out["tracking"] = {"uri": uri, "run_id": tracked.run_id}
    if args.json:
        print(json.dumps(out, default=_json_default, allow_nan=False, indent=None))
    elif tracked is not None:
        print(f"recorded as MLflow run {tracked.run_id} in {uri}")
    return 0 if result.status == "finished" else 3


def _run_store(tracking_uri: str | None, spec: Any) -> str:
    """The store ``binbench run`` records in; missing data stops the run before a run is recorded."""
    from bench.track.record import default_run_store

    if not spec.config.download:
        from bench.data import dataset_source

        dataset_source(spec.config.dataset, spec.config.data_root)
    return tracking_uri or default_run_store()


def cmd_evaluate(args: argparse.Namespace) -> int:
    from bench.track.evaluate import evaluate_recorded, find_run

    if args.exported:
        return cmd_evaluate_exported(args)
    if not args.run:
        raise BinbenchError("give a run (an MLflow run id or a run's folder), or --exported FILE")
    rec = find_run(args.run, args.tracking_uri)
    top1 = evaluate_recorded(rec, data_root=args.data_root, device=args.device)
    mode, value = next(iter(top1.items()))
    logged = f"; logged top-1 {rec.logged_top1:.2f}" if rec.logged_top1 is not None else ""
    if args.json:
        print(json.dumps({"where": rec.where, "top1": value, "eval_modes": top1, "logged_top1": rec.logged_top1}))
    else:
        others = "".join(f", {m} {v:.2f}" for m, v in list(top1.items())[1:])
        print(f"{rec.where}: test top-1 {value:.2f} ({mode}{others}){logged}")
    return 0


def cmd_evaluate_exported(args: argparse.Namespace) -> int:
    from bench.export.commands import evaluate_exported, print_json

    if args.run:
        raise BinbenchError("give either a run or --exported FILE (`binbench export RUN` checks a run against its "
                            "export)")
    out = evaluate_exported(args.exported, args.data_root)
    if args.json:
        print_json(out)
    else:
        print(f"{out['file']}: test top-1 {out['top1']:.2f} on {out['images']} images, {out['how']} ({out['model']}, "
              f"{out['estimator']}, {out['mode']} network)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from bench.export.commands import export_command

    lines, ok = export_command(args.run, args.out, args.onnx, args.tracking_uri, args.data_root)
    print("\n".join(lines))
    return 0 if ok else 1


def dry_run_plan(values: dict[str, Any]) -> dict[str, Any]:
    """What ``binbench run`` would do, without starting it or loading data: the resolved config, the stage plan,
    and the source of every value the recipe sets (``overridden_by_user`` where the command line set it)."""
    from bench.data import get_dataset
    from bench.recipes import NO_PUBLISHED, has_published_recipe, recipe_provenance
    from bench.spec import resolve

    spec = resolve(values)
    cfg = spec.config
    ctx = {"model": cfg.model, "dataset": cfg.dataset, "w_bits": cfg.w_bits, "a_bits": cfg.a_bits}

    def by_user(key: str) -> bool:
        top, _, sub = key.partition(".")
        if top not in values or values[top] is None:
            return False
        return not sub or (isinstance(values[top], dict) and sub in values[top])

    prov = [{"key": p.key, "value": p.value, "source": p.source, "extrapolated": p.extrapolated,
             "overridden_by_user": by_user(p.key)} for p in recipe_provenance(cfg.estimator, ctx, cfg.recipe)]
    ds = get_dataset(cfg.dataset)
    for key, default in (("epochs", ds.default_epochs), ("batch_size", ds.default_batch_size)):
        if not any(p["key"] == key for p in prov):
            prov.append({"key": key, "value": default, "source": f"dataset {cfg.dataset!r} default",
                         "extrapolated": False, "overridden_by_user": by_user(key)})
    published = has_published_recipe(cfg.estimator)
    source = {p["key"]: "set by you" if p["overridden_by_user"] else p["source"] for p in prov}
    return {"dry_run": True, "config": cfg.to_dict(), "stages": [s.to_dict() for s in spec.stages], "key": spec.key,
            "precision": {"value": "bf16" if cfg.amp else "float32", "source": source.get("amp", "set by you"),
                          "note": "bf16 is autocast on CUDA only: a CPU run computes in float32"},
            "warmup": {"epochs": cfg.warmup_epochs, "per": cfg.schedule_unit,
                       "source": source.get("schedule_unit", "set by you")},
            "recipe": {"name": cfg.recipe, "estimator_has_published_recipe": published,
                       "note": NO_PUBLISHED if cfg.recipe == "published" and not published else "",
                       "provenance": prov}}


def _dry_run(values: dict[str, Any], as_json: bool) -> int:
    out = dry_run_plan(values)
    if as_json:
        print(json.dumps(out, default=_json_default, allow_nan=False, indent=None))
        return 0
    cfg, rec = out["config"], out["recipe"]
    from bench.config import bits_name

    bits = bits_name(cfg["w_bits"], cfg["a_bits"])
    print(f"binbench run --dry-run: {cfg['estimator']} / {cfg['model']} / {cfg['dataset']} / {bits} / recipe "
          f"{rec['name']}: nothing started, no data loaded")
    print("\nresolved config:")
    for key, value in cfg.items():
        print(f"  {key} = {value!r}")
    print("\nstages:")
    for st in out["stages"]:
        print(f"  {st['index']} {st['name']}: {st['epochs']} epochs, {st['optimizer']} lr {st['lr']:g} momentum "
              f"{st['momentum']:g} weight decay {st['weight_decay']:g}, {st['lr_schedule']} schedule, warm-up "
              f"{st['warmup_epochs']} epochs, stepped per {st['schedule_unit']}"
              + (f", estimator {st['estimator']}" if st["estimator"] else ""))
    prec, warm = out["precision"], out["warmup"]
    print(f"\nprecision: {prec['value']} ({prec['note']})  <- {prec['source']}")
    print(f"warm-up: {warm['epochs']} epochs, the learning rate stepped per {warm['per']}  <- {warm['source']}")
    print(f"\nrecipe {rec['name']}: where each value comes from" + (f" ({rec['note']})" if rec["note"] else ""))
    for p in rec["provenance"]:
        flags = (" [extrapolated]" if p["extrapolated"] else "") + (" [overridden by you]" if p["overridden_by_user"]
                                                                    else "")
        print(f"  {p['key']} = {p['value']!r}  <- {p['source']}{flags}")
    return 0


def _results_dir(args: argparse.Namespace, suite_name: str) -> str:
    """--results-dir, else runs/<suite name> under the current folder (the user's own runs, which must stay
    inside runs/; the committed results/ is read only where named); never an existing file."""
    from bench.suite import inside
    from bench.track.store import USER_RUNS

    out = args.results_dir or str(inside(USER_RUNS, suite_name))
    _writable_folder(out, "--results-dir" if args.results_dir else "the results folder")
    return out


def _writable_folder(path: str | os.PathLike, what: str) -> None:
    """Refuse, before anything runs, a folder to write into that is an existing file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BinbenchError(f"{what} {p} is a file, not a folder: pass a folder (it is created if missing)")


def _check_store_file(store: Path | None) -> None:
    """A store file that is not an SQLite database (a copy cut short, another file of that name) is one line."""
    if store is None or not store.exists():
        return
    if store.is_dir():
        raise BinbenchError(f"{store} is a folder, not an MLflow store: pass the results folder that holds it")
    try:
        with open(store, "rb") as f:
            head = f.read(16)
    except PermissionError:
        raise BinbenchError(f"cannot read {store}: permission denied") from None
    if head and head != b"SQLite format 3\x00":
        raise BinbenchError(f"{store} is not an SQLite database (an MLflow store binbench wrote): restore it, or "
                            "point --results-dir at a folder with a real one")


def _report_suite_name(suite: str) -> str:
    """The name a report of ``suite`` reads results under: the suite file's (checked as a suite run checks it),
    or, when no such file exists any more, the argument itself if it is a valid suite name."""
    from bench.suite import NAME_RE, find_suite, suite_identity

    try:
        find_suite(suite)
    except BinbenchError:
        if NAME_RE.fullmatch(suite) and ".." not in suite:
            return suite  # results of a suite whose file is gone
        raise
    return suite_identity(suite)[1]


def cmd_suite(args: argparse.Namespace) -> int:
    from bench.suite import list_suites, load_suite

    if args.action == "list":
        for name in list_suites():
            try:
                s = load_suite(name)
                print(f"{name:<16} {len(s.trials):>4} trials  {shorten(s.description, 90)}")
            except BinbenchError as exc:
                print(f"{name:<16} INVALID: {str(exc).splitlines()[0]}")
        return 0
    if not args.suite:
        raise BinbenchError(f"binbench suite {args.action} needs a suite name or a path to a .yaml file")
    if args.max_trials is not None and args.max_trials < 1:
        raise BinbenchError(f"--max-trials must be a positive number of trials, got {args.max_trials}")
    suite = load_suite(args.suite, data_root=args.data_root, max_trials=args.max_trials)  # loaded once
    if args.action == "run":
        results_dir = _results_dir(args, suite.name)  # checked before anything starts
    if args.action == "show" or args.dry_run:
        return _show_suite(suite, args)
    from bench.exec.driver import run_suite

    out = run_suite(suite, results_dir, resume=args.resume, address=args.address,
                    cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
                    tracking_uri=args.tracking_uri, max_concurrent=args.max_concurrent, executor=args.executor,
                    pack=args.pack)
    counts: dict[str, int] = {}
    for st in out.statuses.values():
        counts[st] = counts.get(st, 0) + 1
    labels = {t.key: t.label for t in suite.trials}
    for key, st in out.statuses.items():
        if st != "finished":
            print(f"  {labels.get(key, key)}: {st}")
    print(f"suite {suite.name}: " + ", ".join(f"{n} {st}" for st, n in sorted(counts.items()))
          + f" ({out.submitted} run now, {out.skipped} already done); tracking {out.tracking_uri}")
    _print_summary(out.tracking_uri, suite)
    print(f"tables and figures: binbench report {args.suite} --results-dir {out.results_dir}")
    return 0 if all(st in ("finished", "diverged") for st in out.statuses.values()) else 1


def _show_suite(suite, args: argparse.Namespace) -> int:
    """``suite show`` and ``suite run --dry-run``: the trials, their budget, the cost estimate, missing data."""
    from bench.progress import format_duration, format_flop
    from bench.suite import estimate_cost, missing_data

    cost = estimate_cost(suite)
    print(f"suite {suite.name} ({suite.path}): {len(suite.trials)} trials")
    if suite.description:
        print(suite.description.strip())
    for t in suite.trials:
        c = t.spec.config
        print(f"  {t.key}  {t.label:<48} epochs {c.epochs:>4}  batch {c.batch_size:>4}  lr {c.lr:g}")
    if suite.search:
        print(f"search: {suite.search.get('num_samples', 1)} sample(s) per trial over "
              f"{', '.join(suite.search['space'])} with ASHA per grid cell")
    _show_packing(suite, args)
    missing = missing_data(suite)
    print(f"cost estimate: {format_flop(cost['flop'])}, ~{format_duration(cost['cpu_hours'] * 3600)} on a "
          f"2-core CPU, ~{format_duration(cost['gpu_hours'] * 3600)} on one GPU (nominal rates, rough)")
    print("needs: " + ("a GPU" if cost["needs_gpu"] else "CPU is enough") + "; data: "
          + ("; ".join(m.split(": ", 1)[1] for m in missing) if missing else "all present"))
    if args.action == "run":
        print("dry run: nothing started")
    return 0


def _show_packing(suite, args: argparse.Namespace) -> None:
    """How ``suite run`` with these arguments packs the trials (``--pack``, the workers, the memory)."""
    from bench.exec.driver import local_workers
    from bench.exec.plan import PackMode, describe, plan_packs

    mode = PackMode.parse(getattr(args, "pack", "auto"))
    workers = local_workers(getattr(args, "cpus_per_trial", 1), getattr(args, "gpus_per_trial", 0.0),
                            getattr(args, "max_concurrent", None), len(suite.trials))
    packs = plan_packs(suite.trials, mode, workers, search=bool(suite.search))
    why = ("a search suite's trials each sample their own point" if suite.search else
           "--pack off" if mode.mode == "off" else f"--pack {mode.cap or 'auto'}, {workers} worker(s)")
    print(f"packing: {len(suite.trials)} trials in {len(packs)} unit(s) ({why})")
    for line in describe(packs) if len(packs) < len(suite.trials) else []:
        print(f"  {line}")


def _print_summary(uri: str, suite) -> None:
    """Final top-1 per cell, mean +- std over seeds, from the tracking store (what the report will say), then the
    report's checks: which cells cannot discriminate estimators, which runs were still learning."""
    from bench.report import collect, leaderboard, summary_lines

    try:
        c = collect(uri, suite.name, tuple(sorted(suite.search["space"])) if suite.search else (),
                    {t.key for t in suite.trials})
        lb = leaderboard(c)
    except BinbenchError as exc:
        print(f"no summary: {exc}")
        return
    print(f"{'dataset':<14}{'network':<10}{'bits':<8}{'recipe':<10}{'method':<18}{'top-1 (mean ± std, n)':>24}")
    for _, r in lb.iterrows():
        std = "" if r.n < 2 else f" ± {r.top1_std:.2f}"
        mode = f" [{r.eval_mode}]" if r.eval_mode not in ("default", "") else ""
        print(f"{r.dataset:<14}{r.network:<10}{r.bits:<8}{r.recipe:<10}{r.method:<18}"
              f"{f'{r.top1_mean:.2f}{std} (n={r.n})':>24}{mode}" + (f"  {r.diverged} diverged" if r.diverged else ""))
    for line in summary_lines(c, lb):
        print(line)


def cmd_ui(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from bench.track.store import (
        REFERENCE_RESULTS,
        USER_RUNS,
        default_tracking_uri,
        probe_server,
        reference_hint,
        sqlite_path,
    )

    if not (args.suite or args.tracking_uri or args.results_dir):
        mine = sorted(p.parent.name for p in USER_RUNS.glob("*/mlflow.db"))
        ref = sorted(p.parent.name for p in REFERENCE_RESULTS.glob("*/mlflow.db"))
        raise BinbenchError("binbench ui needs a suite name (or --results-dir / --tracking-uri); suites with a store "
                            f"under {USER_RUNS}/: " + (", ".join(mine) if mine else "none yet")
                            + (f"; reference results (--results-dir {REFERENCE_RESULTS}/NAME): {', '.join(ref)}"
                               if ref else ""))
    uri = args.tracking_uri or default_tracking_uri(args.results_dir or _results_dir(args, args.suite))
    probe_server(uri)
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        raise BinbenchError(f"no MLflow store at {db}: run `binbench suite run` first or pass --results-dir / "
                            "--tracking-uri" + ("" if args.results_dir or args.tracking_uri else
                                                reference_hint(args.suite)))
    exe = shutil.which("mlflow") or "mlflow"
    print(f"MLflow UI for {uri} on http://127.0.0.1:{args.port} (Ctrl-C to stop)")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    return subprocess.call([exe, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)],
                           env=env)


def cmd_report(args: argparse.Namespace) -> int:
    from bench.report import report, summary_lines

    name = _report_suite_name(args.suite)  # a bad suite file, name or folder: one line, before reading results
    if args.results_dir:
        _writable_folder(args.results_dir, "--results-dir")
    else:
        _results_dir(args, name)
    if args.out:
        _writable_folder(args.out, "--out")
    uri = args.tracking_uri or ""
    _check_store_file(Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else
                      None if uri else Path(args.results_dir or _results_dir(args, name)) / "mlflow.db")
    try:
        c, tables, figs = report(args.suite, results_dir=args.results_dir, tracking_uri=args.tracking_uri,
                                 out_dir=args.out, notes=args.note)
    except PermissionError as exc:
        raise BinbenchError(f"cannot access {exc.filename}: permission denied; give binbench a results folder it "
                            "can read and write (--results-dir, --out)") from None
    print(f"report of {c.suite}: {len(c.runs)} trial runs counted ({c.ignored} ignored) from {c.uri}")
    for p in [*tables.values(), *figs]:
        print(f"  wrote {p}")
    for line in summary_lines(c):
        print(line)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from bench.benchmark import run_benchmark

    only = set(args.only.split(",")) if args.only else None
    bad = (only or set()) - {"overhead", "estimators", "ensemble", "suite", "memory"}
    if bad:
        raise BinbenchError(f"--only takes overhead, estimators, ensemble, suite, memory; got {', '.join(sorted(bad))}")
    _writable_folder(args.out, "--out")
    run_benchmark(args.out, data_root=args.data_root, repeats=args.repeats, quick=args.quick, only=only)
    import torch

    print((Path(args.out) / f"benchmark-{'gpu' if torch.cuda.is_available() else 'cpu'}.md").read_text())
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay the first epochs of recorded trials of a suite with the code checked out now (bench.track.replay)."""
    import shutil
    import tempfile

    from bench.suite import suite_identity
    from bench.track.replay import replay_suite
    from bench.track.store import reference_hint, sqlite_uri, suite_folder

    name = suite_identity(args.suite)[1] if not Path(args.suite).is_dir() else args.suite
    store = Path(args.results_dir or suite_folder(name)) / "mlflow.db"
    if not store.is_file():
        raise BinbenchError(f"no MLflow store at {store}: pass --results-dir where suite {name} ran"
                            + ("" if args.results_dir else reference_hint(name)))
    if args.epochs < 1 or args.per_estimator < 1:
        raise BinbenchError("--epochs and --per-estimator must be >= 1")
    with tempfile.TemporaryDirectory(prefix="binbench-replay-") as tmp:
        copy = Path(tmp) / "mlflow.db"  # read a copy: the recorded store is never written
        shutil.copy(store, copy)
        res = replay_suite(sqlite_uri(copy), name, args.epochs, args.per_estimator, args.data_root, args.threads)
    differ = [r for r in res if r.differences]
    print(f"replayed {len(res)} trial(s) of {name} from {store}: {len(res) - len(differ)} equal, {len(differ)} differ")
    return 1 if differ else 0


def _add_evaluate(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="rebuild a recorded run's model from its logged config and weights and "
                                         "measure its test top-1 again")
    ev.add_argument("run", metavar="RUN_ID_OR_PATH", nargs="?",
                    help="an MLflow run id, or a folder with config.json and model/weights.pt")
    ev.add_argument("--exported", metavar="FILE", help="evaluate an exported network instead: a .bnn.safetensors "
                    "file bit-level (XNOR-popcount), or its .onnx model in onnxruntime")
    ev.add_argument("--tracking-uri", help="the store holding the run (default: runs/, runs/*/ and results/*/ here)")
    ev.add_argument("--data-root")
    ev.add_argument("--device", help="auto (default: the recorded one), cpu or cuda")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)
    ex = sub.add_parser("export", help="write a trained run as a deployable file (packed sign bits, folded scales "
                                       "and BatchNorm) and check it bit-level against the simulated evaluation")
    ex.add_argument("run", metavar="RUN", help="an MLflow run id, a run's artifact folder, or a suite trial's key or "
                                               "label")
    ex.add_argument("--out", metavar="FILE", help="where to write (default: runs/exports/<run key>.bnn.safetensors)")
    ex.add_argument("--onnx", action="store_true", help="also write FILE's .onnx beside it and check it in "
                                                        "onnxruntime")
    ex.add_argument("--tracking-uri", help="the store holding the run (default: runs/, runs/*/ and results/*/ here)")
    ex.add_argument("--data-root")
    ex.set_defaults(func=cmd_export)


def _add_suite_commands(sub: Any) -> None:
    """``suite`` and ``report``."""
    su = sub.add_parser("suite", help="list, show or run suites (suites/*.yaml) on Ray Tune with MLflow tracking")
    su.add_argument("action", choices=["list", "show", "run"])
    su.add_argument("suite", nargs="?", help="a suite name (binbench suite list) or a path to a .yaml file")
    su.add_argument("--resume", action="store_true", help="skip trials that already ended; continue unfinished ones")
    su.add_argument("--dry-run", action="store_true", help="validate and print the trials; start nothing")
    su.add_argument("--address", help="an existing Ray cluster: auto or HOST:PORT (default: this machine)")
    su.add_argument("--executor", choices=["auto", "local", "ray"], default="auto",
                    help="local: worker processes on this machine that start once (faster for short trials); ray: "
                         "Ray Tune (clusters, search suites); auto (default): ray for --address, search suites and "
                         "GPU trials, local otherwise")
    su.add_argument("--cpus-per-trial", type=int, default=1)
    su.add_argument("--gpus-per-trial", type=float, default=0.0)
    su.add_argument("--max-concurrent", type=int, help="at most this many trials (or packs) at once")
    su.add_argument("--pack", default="auto", metavar="auto|off|N",
                    help="train trials that share model, data, batch size and epochs as one program (a pack; each "
                         "trial keeps its own run, checkpoints and numbers): auto (default) packs as many as memory "
                         "allows, off trains every trial alone, N caps a pack at N trials")
    su.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the results folder)")
    su.add_argument("--results-dir", help="where the MLflow store, checkpoints and Ray files go "
                                          "(default: runs/<suite> under the current directory)")
    su.add_argument("--data-root")
    su.add_argument("--max-trials", type=int, metavar="N",
                    help="allow a suite of up to N trials (default 10000: a larger grid is refused before it is "
                         "expanded)")
    su.set_defaults(func=cmd_suite)

    rp = sub.add_parser("report", help="tables and figures of a suite, from its MLflow runs")
    rp.add_argument("suite", help="suite name or .yaml path")
    rp.add_argument("--results-dir", help="where the suite ran (default: runs/<suite>; the committed reference "
                    "results: results/<suite>)")
    rp.add_argument("--tracking-uri")
    rp.add_argument("--out", help="where to write (default: the results dir)")
    rp.add_argument("--note", action="append", default=[], metavar="TEXT",
                    help="a note for every table's header (e.g. why the numbers hold after a code change); kept in "
                         "<results>/notes.txt, so later reports of the folder print it too; repeatable")
    rp.set_defaults(func=cmd_report)


def _add_tool_commands(sub: Any) -> None:
    """``benchmark``, ``replay`` and ``ui``."""
    bm = sub.add_parser("benchmark", help="speed and memory against a hand-written floor and the reference pipeline")
    bm.add_argument("--out", default=os.path.join("runs", "benchmark"),
                    help="where the tables go (default: runs/benchmark; the committed ones: results/perf)")
    bm.add_argument("--data-root")
    bm.add_argument("--repeats", type=int, default=3)
    bm.add_argument("--quick", action="store_true", help="reduced sizes: checks that it runs, not for numbers")
    bm.add_argument("--only", help="comma-separated subset of: overhead, estimators, ensemble, suite, memory")
    bm.set_defaults(func=cmd_benchmark)

    rl = sub.add_parser("replay", help="train the first epochs of recorded suite trials again and compare their "
                                       "metrics with the store's")
    rl.add_argument("suite", help="suite name or .yaml path")
    rl.add_argument("--results-dir", help="where the suite ran (default: runs/<suite>; the committed reference "
                    "results: results/<suite>)")
    rl.add_argument("--epochs", type=int, default=1, help="epochs to replay per trial (default 1)")
    rl.add_argument("--per-estimator", type=int, default=1, help="trials per estimator (default 1)")
    rl.add_argument("--data-root")
    rl.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the suites' trials)")
    rl.set_defaults(func=cmd_replay)

    ui = sub.add_parser("ui", help="serve the MLflow UI for a suite's store on 127.0.0.1")
    ui.add_argument("suite", nargs="?", help="the suite whose store to serve (runs/<suite>/mlflow.db)")
    ui.add_argument("--results-dir", help="the folder holding the store (default: runs/<suite>)")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=cmd_ui)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="binbench", description="Benchmark harness for BNN binarization estimators.")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="list estimators, models or datasets")
    ls.add_argument("what", choices=["estimators", "models", "datasets"])
    ls.add_argument("pattern", nargs="?", help="wildcard filter, e.g. 're*'")
    ls.set_defaults(func=cmd_list)

    sh = sub.add_parser("show", help="describe an estimator (docstring, hyperparameters, recipes) or plot them")
    sh.add_argument("what", choices=["estimator", "estimators"])
    sh.add_argument("name", nargs="?")
    sh.add_argument("--plot", metavar="FILE.png", help="draw forward function and surrogate gradient")
    sh.set_defaults(func=cmd_show)

    from bench.config import keys_help

    r = sub.add_parser("run", help="train one configuration", formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="config keys for --set KEY=VALUE (RunConfig in bench/config.py):\n" + keys_help())
    r.add_argument("--estimator", "-e", metavar="NAME",
                   help="the weight estimator (binbench list estimators; default: the reference estimator)")
    r.add_argument("--model", "-m", metavar="NAME",
                   help="binbench list models (default: mlp with binarize_first_last=true, every layer binary, as "
                        "the suites; -m mlp alone keeps the first and last layers full precision)")
    r.add_argument("--dataset", "-d", metavar="NAME", help="binbench list datasets (default: digits, embedded)")
    r.add_argument("--epochs", type=int, help="default: the recipe's or the dataset's")
    r.add_argument("--seed", type=int, help="fixes the result (default 0)")
    r.add_argument("--recipe", choices=list(RECIPES))
    r.add_argument("--bits", help="W1A1 (default), W1A32 or FP32")
    r.add_argument("--data-root")
    r.add_argument("--download", action="store_true", help="let torchvision download the dataset (needs internet)")
    r.add_argument("--checkpoint-dir")
    r.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --checkpoint-dir")
    r.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config key; repeatable")
    r.add_argument("--json", action="store_true", help="print the result as one JSON object (no progress lines); "
                   "best_epoch and selected_epoch count from 1 within the last stage, as the console does, while "
                   "history's epoch and global_epoch are 0-based loop indices")
    r.add_argument("--dry-run", action="store_true",
                   help="print the resolved config, the stage plan and the source of every recipe value; start "
                        "nothing and load no data (with --json: one JSON object)")
    r.add_argument("--no-track", action="store_true", help="record nothing in MLflow")
    r.add_argument("--tracking-uri", help="MLflow store to record the run in (default: $BINBENCH_RUN_STORE, else "
                                          "sqlite runs/mlflow.db under the current directory)")
    r.set_defaults(func=cmd_run)
    _add_evaluate(sub)
    _add_suite_commands(sub)
    _add_tool_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BinbenchError as exc:
        print(f"binbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("binbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of the user's
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
