"""Formatting and writing of a report's tables: ``leaderboard.{md,csv,tex}``, ``paired.csv``,
``diagnostics.csv``, ``complexity.{md,csv}``, their legends, captions, provenance and checks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BinbenchError
from bench.export.columns import EXPORT_SIZE_COL, EXPORT_TOP1_COL, NO_EXPORT_NOTE, none_exported
from bench.export.columns import LEGEND as EXPORT_LEGEND
from bench.export.columns import display as export_display
from bench.progress import format_elapsed as duration
from bench.report import budget, complexity, escape, latex
from bench.report.collect import Collected, method_label, reference
from bench.report.escape import md_table
from bench.report.leaderboard import LATE_GAIN, _setting_labels, leaderboard
from bench.report.paths import relative
from bench.report.stats import FLAG, _known, diagnostics_table, discrimination, paired

FINAL_COL, VAL_COL, BEST_COL = "Final-epoch Top-1", "Val-selected Top-1", "Best test epoch (selected on test)"


# -- writing -----------------------------------------------------------------------------------------------
def _setting_lines(df: pd.DataFrame) -> list[str]:
    """One line per estimator whose rows need their setting named (its ``setting_label``), e.g. an ensemble
    size."""
    from bench.estimator import ESTIMATORS

    out = []
    for est, g in df.groupby("estimator"):
        labels = _setting_labels(g)
        if labels:
            out.append(f"{ESTIMATORS.get(est).display_name}: {'; '.join(labels)}")
    return out


def _code_lines(df: pd.DataFrame) -> list[str]:
    """Which code trained the runs (each estimator's package, version and source digest) and in what precision:
    bf16 named wherever a run used it."""
    origins = sorted({o for v in df.get("origin", pd.Series(dtype=str)).fillna("") for o in v.split("; ") if o})
    missing = int((df.get("origin", pd.Series("", index=df.index)).fillna("") == "").sum())
    lines = []
    if origins or missing:
        lines.append("estimator code (package version, source digest): " + ("; ".join(origins) or "not recorded")
                     + (f" ({missing} run(s) recorded before binbench recorded it)" if missing and origins else ""))
    bf16 = df[df.get("precision", pd.Series("float32", index=df.index)) == "bf16"]
    lines.append("precision: float32" if bf16.empty else
                 f"precision: bf16 autocast in {len(bf16)} of {len(df)} runs ("
                 + ", ".join(sorted(set(bf16.estimator + " " + bf16.model + " " + bf16.bits))) + "), float32 elsewhere")
    return lines


def provenance(c: Collected, results_dir: Path) -> list[str]:
    df = c.runs
    fmt = "%Y-%m-%d %H:%M UTC"
    start = time.strftime(fmt, time.gmtime(df["start"].min() / 1000))
    end = time.strftime(fmt, time.gmtime((df["end"].max() or df["start"].max()) / 1000))
    commands = sorted({p["tags"].get("command", "") for p in c.parents if p["tags"].get("command")})
    epochs = "; ".join(f"{m}: {', '.join(map(str, sorted(g['epochs'].unique())))}" for m, g in df.groupby("model"))
    lines = [
        f"suite: {c.suite}; recipes: {', '.join(sorted(df.recipe.unique()))}; epochs per run: {epochs}",
        f"seeds: {', '.join(map(str, sorted(df.seed.unique())))}; runs counted: {len(df)} (one per cell and seed; "
        f"{c.ignored} other runs ignored: repeats, failed, killed or unfinished)",
        f"git commit(s): {', '.join(sorted(df.git_commit.unique()))}; torch {', '.join(sorted(df.torch.unique()))}",
        f"hardware: {'; '.join(sorted(set(df.cpu + ' / GPU: ' + df.gpu)))}; runs from {start} to {end}",
        _wall_line(c),
        "made by: " + (" && ".join(commands) if commands else f"binbench suite run {c.suite}")
        + f", then: binbench report {c.suite}" + ("" if _default_results(c.suite, results_dir) else
                                                  " --results-dir THIS_FOLDER"),
        f"tracking store: {c.uri}" + _store_digest(c.uri),
        _executions(c),
    ]
    points = df["search_point"].replace("", pd.NA).dropna().unique() if "search_point" in df else []
    if len(points):
        lines.append(f"searched: {len(points)} points of ({df['search_point'].iloc[0].split('=')[0]}, ...); Top-1 "
                     "aggregates every finished point and seed of a cell (sensitivity.png shows them one by one)")
    lines += _setting_lines(df) + _code_lines(df)
    lines += [f"note: {' '.join(n.split())}" for n in c.notes]  # one line each: no escape from a comment
    design = suite_description(c)
    if design:
        lines.append(f"design (the suite file's description): {design}")
    return [relative(x, results_dir) for x in lines]  # no machine path in a committed report


def _wall_line(c: Collected) -> str:
    wall = wall_time(c)
    return ("wall time measured: " + (f"{duration(wall)} (the suite executions listed below, start to end, summed; "
                                      "on the hardware above)" if wall is not None else "not recorded"))


def _store_digest(uri: str) -> str:
    """" (sha256:... of the file as this report read it)" for a SQLite store: which state of the store the
    tables come from (the report writes nothing into it)."""
    import hashlib

    from bench.track.store import sqlite_path

    db = sqlite_path(uri)
    if db is None or not db.is_file():
        return ""
    h = hashlib.sha256()
    with open(db, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f" (sha256:{h.hexdigest()[:16]} of the file as this report read it)"


def _executions(c: Collected) -> str:
    """The suite executions (MLflow parent runs) in the store, oldest first: where the counted runs came from, each
    with how it ran (executor, workers, trials and packs) and the wall time it took."""
    done = [f"{p.get('run_id', '?')} ({_how(p)})" for p in sorted(c.parents, key=lambda p: p["start"])]
    return f"suite executions in the store (MLflow parent runs, oldest first): {', '.join(done) or 'none'}"


def _how(parent: dict[str, Any]) -> str:
    from bench.track.store import PACKS_TAG, WORKERS_TAG

    tags, params = parent["tags"], parent.get("params", {})
    executor = tags.get("executor")
    parts = [f"{executor} executor"] if executor else []  # stores older than the tag do not say
    if tags.get(WORKERS_TAG):
        parts.append(f"{tags[WORKERS_TAG]} worker(s) of {tags.get('cpus_per_trial', '?')} CPU")
    submitted = params.get("submitted", tags.get("submitted"))
    if submitted is not None:
        parts.append(f"{submitted} trial(s) trained" + (f" in {tags[PACKS_TAG]} pack(s)" if tags.get(PACKS_TAG)
                                                        else ""))
    end = parent.get("end")
    parts.append(f"{duration((end - parent['start']) / 1e3)} wall" if end else "did not end")
    return ", ".join(parts)


def wall_time(c: Collected) -> float | None:
    """The measured wall time of the suite: its executions' spans (parent runs, start to end) summed, in seconds;
    None when no execution ended."""
    spans = [(p["end"] - p["start"]) / 1e3 for p in c.parents if p.get("end")]
    return sum(spans) if spans else None


def _default_results(suite: str, results_dir: Path) -> bool:
    """Whether ``results_dir`` is the suite's default results folder (``runs/<suite>`` here)."""
    from bench.track.store import suite_folder

    return Path(results_dir).resolve() == suite_folder(suite).resolve()


def suite_description(c: Collected) -> str:
    """The suite's own description (its design, budget and what its runs showed): from the shipped suite file of
    that name (which may have gained notes on the measured runs since), else the newest parent run's
    ``description`` tag, else the suite file it names if still there. Files are read as data (safe YAML)."""
    from bench.suite import SUITES_DIR

    text = _description_in(SUITES_DIR / f"{c.suite}.yaml", c.suite)
    for p in sorted(c.parents, key=lambda p: p["start"], reverse=True):
        text = text or p["tags"].get("description", "") or _description_in(Path(p["tags"].get("suite_file", "")),
                                                                            c.suite)
    return " ".join(str(text).split())


def _description_in(path: Path, suite: str) -> str:
    from bench.suite import read_suite_file  # the bounded, duplicate-refusing reader every suite file goes through

    try:
        raw = read_suite_file(path) if path.is_file() else None
    except BinbenchError:
        return ""
    return str(raw.get("description") or "") if isinstance(raw, dict) and raw.get("name") == suite else ""


def _fmt(v: float, nd: int = 2) -> str:
    return "–" if not _known(v) else f"{v:.{nd}f}"


def _agree(g: pd.DataFrame, values: pd.Series) -> str:
    """The value where every row of ``g`` has the same; else each value with the methods that have it."""
    groups: dict[str, dict[str, None]] = {}
    for m, v in zip(g["method"], values, strict=True):
        groups.setdefault(str(v), {})[m] = None
    if len(groups) == 1:
        return next(iter(groups))
    return " / ".join(f"{v} ({', '.join(ms)})" for v, ms in groups.items())


def setup_lines(lb: pd.DataFrame) -> list[str]:
    """Per network of the suite: which layers are binary, the binary share of the conv/linear weights, widths,
    batch size, training subset, validation split, epochs per stage and where the data came from."""
    lines = [NO_EXPORT_NOTE] if none_exported(lb) else []
    for (ds, net), g in lb.groupby(["dataset", "network"], sort=False):
        b = g[g.role != "baseline"] if (g.role != "baseline").any() else g
        pct = b["binary_weight_pct"].map(lambda v: f"{_fmt(v, 1)}%" if _known(v) else "?")
        lines.append(f"{net} on {ds}: binary conv/linear layers: {_agree(b, b.binary_layers)} (first and last "
                     f"{_agree(b, b.first_last)}); binary weights: {_agree(b, pct)} of the conv/linear weights; "
                     f"widths: {_agree(g, g.widths)}; batch size: {_agree(g, g.batch_size)}; training subset: "
                     f"{_agree(g, g.train_subset)}; validation split: {_agree(g, g.val_split)}; epochs per stage: "
                     f"{_agree(g, g.stage_epochs)}; data: {_agree(g, g.dataset_source)}")
    return lines


def _cell_name(r: pd.Series) -> str:
    return f"{r['dataset']} {r['model']} {r['bits']} {r['recipe']}"


def _check_line(r: pd.Series) -> str:
    """One cell's control check, in words."""
    ctl = method_label({"estimator": r["control"], "role": "control"})
    if not r["n_pairs"]:
        evidence = f"no {r['probe']} run shares a seed with {ctl}"
    else:
        evidence = (f"{r['probe']} − {ctl} = {_fmt(r['lift'])} points, 95% CI [{_fmt(r['ci95_low'])}, "
                    f"{_fmt(r['ci95_high'])}] over {r['n_pairs']} paired seed(s)")
    if r["check"] == "discriminates":
        return f"{_cell_name(r)}: discriminates: {evidence}"
    return f"{_cell_name(r)}: {FLAG}: {evidence} (needs 2 or more pairs and an interval above 0)"


def summary_lines(c: Collected, lb: pd.DataFrame | None = None) -> list[str]:
    """What ``binbench report`` and ``binbench suite run`` print after their tables: whether each cell can tell
    estimators apart (the reference estimator against the control) and which runs were still learning when they
    ended."""
    d = discrimination(c)
    checked, unchecked = d[d.check != "no control"], d[d.check == "no control"]
    lines = []
    if len(checked):
        n = int((checked.check == "cannot discriminate").sum())
        lines.append(f"control check: {n} of {len(checked)} cell(s) cannot discriminate estimators ({reference()} must "
                     "beat the control with a 95% interval above 0)")
        lines += [_check_line(r) for _, r in checked.iterrows()]
    if len(unchecked):
        lines.append(f"no control run in {', '.join(_cell_name(r) for _, r in unchecked.iterrows())}: whether these "
                     "cells can discriminate estimators is unchecked (add a control estimator to the suite's "
                     f"estimators: {', '.join(_controls()) or 'none registered'})")
    lb = leaderboard(c) if lb is None else lb
    late = lb[lb.still_learning]
    if len(late):
        lines.append(f"still learning at the end (late gain > {LATE_GAIN} points over the last quarter of the epochs): "
                     + "; ".join(f"{r.dataset} {r.network} {r.bits} {r.recipe} {r.method} (+{r.late_gain_mean:.2f})"
                                 for r in late.itertuples()))
    return lines


def _lift_cell(r: pd.Series) -> str:
    if r.role == "control":
        return "(control)"
    if not r.lift_n_pairs:
        return "–"
    ci = f" [{_fmt(r.lift_ci95_low)}, {_fmt(r.lift_ci95_high)}]" if _known(r.lift_ci95_low) else ""
    return f"{_fmt(r.lift_vs_control)}{ci} (n={r.lift_n_pairs})"


def _lb_display(lb: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in lb.iterrows():
        top1 = f"{_fmt(r.top1_mean)} ± {_fmt(r.top1_std)} (n={r.n})" if r.n else "–"
        mode = f" [{r.eval_mode}]" if r.eval_mode not in ("default", "") else ""
        flag = " †" if r.cell_check == "cannot discriminate" else ""
        rows.append({"Network": r.network, "Method": r.display + mode, "W/A": r.bits.replace("W", "").replace("A", "/"),
                     "Recipe": r.recipe + flag, FINAL_COL: top1, VAL_COL: _fmt(r.selected_top1_mean),
                     BEST_COL: _fmt(r.best_top1_mean), "Top-5": _fmt(r.top5_mean), "Lift vs control": _lift_cell(r),
                     "Late gain": _fmt(r.late_gain_mean) + (" ↑" if r.still_learning else ""),
                     "Published": _fmt(r.published), "Δ": _fmt(r.delta), "Other eval modes": r.other_modes or "",
                     **export_display(r), "Diverged": str(r.diverged) if r.diverged else "", "_best": bool(r.best)})
    return pd.DataFrame(rows)


def _shown(disp: pd.DataFrame, lb: pd.DataFrame) -> pd.DataFrame:
    """Drop the columns no row of this suite has: top-5 (10-class datasets), validation-selected (no
    validation split), lift (no control), late gain (stores from before it was logged)."""
    empty = {"Top-5": not lb["dataset"].isin(["cifar100", "tiny-imagenet", "imagenet"]).any(),
             VAL_COL: lb["selected_top1_mean"].isna().all(), "Lift vs control": not (lb.role == "control").any(),
             "Late gain": lb["late_gain_mean"].isna().all(), EXPORT_TOP1_COL: none_exported(lb),
             EXPORT_SIZE_COL: none_exported(lb)}
    return disp.drop(columns=[col for col, drop in empty.items() if drop])


def _controls() -> list[str]:
    from bench.estimator import ESTIMATORS

    return [n for n in ESTIMATORS.names() if ESTIMATORS.get(n).role == "control"]


def legend() -> str:
    """The leaderboard's legend, naming the reference estimator the discrimination check uses."""
    return LEGEND.format(ref=reference()) + " " + EXPORT_LEGEND


LEGEND = (f"{FINAL_COL}: test accuracy at the last epoch, mean ± sample std over seeds (n runs). {VAL_COL}: test "
          "top-1 at the last-stage epoch the validation split selects, mean over seeds. Best test epoch: the best "
          "last-stage epoch on the test set (what the official repos report; selected on the test set, so "
          "optimistic). Lift vs control: paired difference (method − control) of final top-1 over shared seeds, "
          "mean and 95% Student-t interval (n pairs); the control keeps its binary weights at their initial "
          f"signs, so a method that does not beat it shows no learning in its binary weights. †: {FLAG} ({{ref}} does "
          "not beat the control with a 95% interval above 0). Late gain: test top-1 points gained over the last "
          f"quarter of the epochs, mean over seeds; ↑: more than {LATE_GAIN}, still learning. Bold: the best "
          "binary method of its network, bits and recipe, alone where it is ahead of the next with a paired 95% "
          "interval above 0 over the same seeds, else together with every method it does not beat so (tied; the "
          "control is never ranked). Published: "
          "bench/reference/published.csv (each row names its paper and table); Δ = ours − published, only where the "
          "dataset and network match (a method the papers name differently is matched by its declared published "
          "name).")


PAIRED_LEGEND = ("Δ: mean over shared seeds of (estimator − {ref}), resp. (estimator − control), top-1 with its 95% "
                 "Student-t interval; p (Holm): two-sided paired t-test p-value (scipy.stats.ttest_rel) and, in "
                 "brackets, Holm-adjusted across the methods of the cell (the control is not in the family); ratio: "
                 "mean top-1 / FP mean top-1 of the same network and dataset (BiBench style).")


def caption(c: Collected, lb: pd.DataFrame) -> str:
    """The LaTeX table's caption: what is shown, the suite, its budget, seeds and the marks; never the machine
    (its CPU and paths are in the provenance comment above the table)."""
    df = c.runs
    epochs = "; ".join(f"{m}: {', '.join(map(str, sorted(g['epochs'].unique())))} epochs"
                       for m, g in df.groupby("model"))
    seeds = sorted(df.seed.unique())
    modes = "; ".join(f"{r.display}: {r.eval_mode} evaluation" for r in lb.drop_duplicates("display").itertuples()
                      if r.eval_mode not in ("default", ""))
    parts = [f"Suite {c.suite}: final-epoch test top-1 (%), mean ± sample std over {len(seeds)} seeds "
             f"({', '.join(map(str, seeds))}); budget {epochs}.",
             "FP: the full-precision network; control: binary weights fixed at their initial signs (never ranked)."]
    wall = wall_time(c)
    if wall is not None:
        parts.insert(1, f"Trained in {duration(wall)} of wall time (the machine: see the comment above the table).")
    if (lb.get("cell_check", pd.Series(dtype=str)) == "cannot discriminate").any():
        parts.append(f"†: {FLAG} ({reference()} does not beat the control with a 95% interval above 0).")
    if lb.published.notna().any():
        parts.append("Pub.: published top-1 (bench/reference/published.csv), not the same experiment.")
    return " ".join(parts + ([modes + "."] if modes else []))


def _flag_notes(d: pd.DataFrame, dataset: str | None = None) -> list[str]:
    bad = d[(d.check == "cannot discriminate") & ((d.dataset == dataset) if dataset else True)]
    return [f"† {_check_line(r)}" for _, r in bad.iterrows()]


def _markdown(c: Collected, disp: pd.DataFrame, lb: pd.DataFrame, head: list[str], checks: list[str]) -> list[str]:
    d = discrimination(c)
    md = [f"# {escape.markdown(c.suite)}: leaderboard", ""] + [f"- {escape.markdown(h)}" for h in head] + [""]
    if checks:
        md += ["## Checks", ""] + [f"- {escape.markdown(x)}" for x in checks] + [""]
    for ds, g in disp.groupby(lb["dataset"], sort=False):
        notes = [escape.markdown(n) for n in _flag_notes(d, ds)]
        md += [f"## {escape.markdown(ds)}", "", md_table(g), ""] + ([*notes, ""] if notes else [])
        md += [f"- {escape.markdown(x)}" for x in lead_lines(lb[lb.dataset == ds])] + [""]
    return md + [legend(), ""]


def lead_lines(lb: pd.DataFrame) -> list[str]:
    """Per cell, the best method's paired lead over the next and whether it is bold alone or tied."""
    out = []
    for r in lb[lb.ahead_of_next.fillna("") != ""].itertuples():
        cell = lb[(lb.network == r.network) & (lb.bits == r.bits) & (lb.recipe == r.recipe) & lb.best]
        how = ("bold alone" if len(cell) == 1 else
               f"tied with {', '.join(cell.display[cell.estimator != r.estimator])} (all bold)")
        out.append(f"lead in {r.network} {r.bits} {r.recipe}: {r.display} {r.ahead_of_next}, 95% paired "
                   f"t-interval; {how}")
    return out


@dataclass(frozen=True)
class Tables:
    """One report's tables, computed once for every writer (Markdown, CSV, LaTeX, HTML)."""

    lb: pd.DataFrame  # leaderboard
    pr: pd.DataFrame  # paired differences
    dg: pd.DataFrame  # diagnostics at stage ends
    cx: pd.DataFrame  # complexity per network and bits
    head: list[str]  # provenance and setup lines
    checks: list[str]  # the control checks and late gains
    ra: pd.DataFrame = field(default_factory=pd.DataFrame)  # rank agreement across budgets (suites with budgets)


DIAG_LEGEND = ("QE: quantization error mean((w_hat − mean|w_hat| sign(w_hat))²) of the value w_hat each estimator "
               "binarizes; b: Laplace scale "
               "of the latent weights; flip: share of binary weights whose sign changed in the stage's last epoch; "
               "means over binary layers and seeds.")


def tables(c: Collected, out: Path) -> Tables:
    lb = leaderboard(c)
    ra = budget.rank_agreement(c.budgets) if not c.budgets.empty else pd.DataFrame()
    return Tables(lb, paired(c), diagnostics_table(c), complexity.summary(c.runs),
                  provenance(c, out) + setup_lines(lb), summary_lines(c, lb), ra)


def write_tables(c: Collected, out: Path, t: Tables | None = None) -> dict[str, Path]:
    """leaderboard.{md,csv,tex}, paired.csv, diagnostics.csv and complexity.{md,csv} under ``out``; returns their
    paths."""
    out.mkdir(parents=True, exist_ok=True)
    t = t or tables(c, out)
    disp = _shown(_lb_display(t.lb), t.lb)
    t.lb.to_csv(out / "leaderboard.csv", index=False)
    t.pr.to_csv(out / "paired.csv", index=False)
    t.dg.to_csv(out / "diagnostics.csv", index=False)
    t.cx.to_csv(out / "complexity.csv", index=False)
    md = _markdown(c, disp, t.lb, t.head, t.checks)
    ref = reference()
    md += [f"## Paired differences to {ref} and to the control (same seeds), ratio to FP", "",
           md_table(_paired_display(t.pr)), "", PAIRED_LEGEND.format(ref=ref), ""]
    if not t.dg.empty:
        md += ["## Diagnostics at the end of each stage", "", md_table(_diag_display(t.dg)), "", DIAG_LEGEND, ""]
    if not t.ra.empty:
        t.ra.to_csv(out / "rank_agreement.csv", index=False)
        md += [f"## {RANK_TITLE}", "", md_table(budget.display(t.ra)), "", budget.LEGEND, ""]
    (out / "leaderboard.md").write_text("\n".join(md))
    tex = latex.render(t.lb, c.suite, caption(c, t.lb), t.head + t.checks, _flag_notes(discrimination(c)))
    (out / "leaderboard.tex").write_text(tex)
    (out / "complexity.md").write_text(complexity.markdown(t.cx, c.suite))
    extra = {"rank_agreement": out / "rank_agreement.csv"} if not t.ra.empty else {}
    return {**extra, "md": out / "leaderboard.md", "csv": out / "leaderboard.csv", "tex": out / "leaderboard.tex",
            "paired": out / "paired.csv", "diagnostics": out / "diagnostics.csv",
            "complexity": out / "complexity.md", "complexity_csv": out / "complexity.csv"}


def write_html(c: Collected, t: Tables, out: Path, figures: list[Path] | list[tuple[Path, str]]) -> Path:
    """``report.html`` beside the tables: the leaderboard, paired, complexity and diagnostics tables, every
    figure embedded, the provenance; self-contained (see :mod:`bench.report.html`)."""
    from bench.report import html

    d = discrimination(c)
    ref = reference()
    sections = [(f"Leaderboard: {ds}", g, " ".join([*_flag_notes(d, ds), *lead_lines(t.lb[t.lb.dataset == ds]),
                                                     legend()]))
                for ds, g in _shown(_lb_display(t.lb), t.lb).groupby(t.lb["dataset"], sort=False)]
    sections += [(f"Paired differences to {ref} and to the control (same seeds), ratio to FP",
                  _paired_display(t.pr), PAIRED_LEGEND.format(ref=ref)),
                 ("Model complexity", complexity.display(t.cx), complexity.LEGEND)]
    if not t.dg.empty:
        sections.append(("Diagnostics at the end of each stage", _diag_display(t.dg), DIAG_LEGEND))
    if not t.ra.empty:
        sections.append((RANK_TITLE, budget.display(t.ra), budget.LEGEND))
    path = out / "report.html"
    from bench.report.figures import caption

    captioned = [f if isinstance(f, tuple) else (f, caption(f.stem)) for f in figures]
    path.write_text(html.render(c.suite, t.head, t.checks, sections, captioned), encoding="utf-8")
    return path


RANK_TITLE = "Rank agreement across budgets (Kendall's tau with the largest budget)"


def _ci(lo: float, hi: float) -> str:
    return f"[{_fmt(lo)}, {_fmt(hi)}]" if _known(lo) else "–"


def _paired_display(pr: pd.DataFrame) -> pd.DataFrame:
    ref = reference()
    rows = []
    for _, r in pr.iterrows():
        ctl = r.get("control_n_pairs", 0)
        rows.append({"Dataset": r.dataset, "Network": r.network, "W/A": r.bits, "Recipe": r.recipe,
                     "Method": r.display, "n pairs": r.n_pairs, f"Δ vs {ref}": _fmt(r.get(f"diff_vs_{ref}", math.nan)),
                     "95% CI": _ci(r.ci95_low, r.ci95_high),
                     "p (Holm)": _p(r.get(f"p_vs_{ref}", math.nan), r.get(f"p_holm_vs_{ref}", math.nan)),
                     "n pairs (control)": int(ctl) if _known(ctl) else 0,
                     "Δ vs control": _fmt(r.get("diff_vs_control", math.nan)),
                     "95% CI (control)": _ci(r.get("control_ci95_low", math.nan), r.get("control_ci95_high",
                                                                                        math.nan)),
                     "p (Holm), control": _p(r.p_vs_control, r.p_holm_vs_control),
                     "Ratio to FP": _fmt(r.ratio_to_fp, 3)})
    return pd.DataFrame(rows)


def _p(p: float, adjusted: float) -> str:
    """A raw and a Holm-adjusted p-value: 3 significant digits, "<0.001" below."""
    def one(v: float) -> str:
        return "–" if not _known(v) else "<0.001" if v < 0.001 else f"{v:.3f}"
    return "–" if not _known(p) else f"{one(p)} ({one(adjusted)})"


def _diag_display(dg: pd.DataFrame) -> pd.DataFrame:
    d = dg.copy()
    for col in ("qe", "laplace_b", "flip_ratio"):
        if col in d:
            d[col] = d[col].map(lambda v: _fmt(v, 4))
    d["stage"] = d["stage"].astype(int)
    return d
