"""Reports: tables and figures like the papers', computed from a suite's MLflow runs and nothing else.

The package is split by what each part does: :mod:`~bench.report.collect` reads the runs from MLflow,
:mod:`~bench.report.stats` computes intervals, paired tests and the control check,
:mod:`~bench.report.leaderboard` builds the leaderboard rows, :mod:`~bench.report.tables` formats and writes
the Markdown/CSV tables (:mod:`~bench.report.latex` the LaTeX ones, :mod:`~bench.report.html` the page),
:mod:`~bench.report.figures` draws the figures and :mod:`~bench.report.budget` the budget curves; this module
runs them in order (:func:`report`) and keeps the report's notes (:mod:`~bench.report.notes`).

Tables: ``leaderboard.{md,csv,tex}`` (final-epoch top-1 mean +- std over seeds, n, the validation-selected and
the best-test-epoch top-1, the lift over the control, the late gain, published numbers and the delta to them;
headed by what each network's runs were: binary layers and weights, widths, batch, data, epochs),
``paired.csv`` (each estimator minus the reference estimator and minus the control over the same seeds, 95%
t-intervals; ratio to the FP baseline), ``diagnostics.csv`` (QE, Laplace b, flip ratio at the end of each stage).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from bench.errors import BinbenchError
from bench.report import notes as notes_mod
from bench.report.collect import (
    DIAG,
    LAYER_METRIC,
    Collected,
    collect,
    display_label,
    method_label,
    published_table,
    reference,
)
from bench.report.leaderboard import LATE_GAIN, leaderboard
from bench.report.stats import CELL, FLAG, discrimination, flagged_cells, holm, lift_table, paired, paired_p, t_interval
from bench.report.tables import (
    Tables,
    caption,
    legend,
    md_table,
    provenance,
    setup_lines,
    summary_lines,
    tables,
    write_html,
    write_tables,
)


def write_figures(c: Collected, out: Path) -> list[Path]:
    """The report's figures (PNG and PDF) under ``out``; returns the PNG paths (see :mod:`bench.report.figures`)."""
    return [p for p, _caption in write_captioned(c, out)]


def write_captioned(c: Collected, out: Path) -> list[tuple[Path, str]]:
    """The report's figures with their captions (what each shows), as report.html prints them."""
    from bench.report.figures import write_captioned as write

    return write(c, out)


def _suite_facts(suite: str) -> tuple[tuple[str, ...], dict[str, float | None] | None]:
    """(the searched keys, each grid trial's key with its budget) from the suite file as it is now; without a
    file that loads, nothing is searched and every trial in the store counts."""
    try:
        from bench.suite import load_suite

        loaded = load_suite(suite, max_trials=sys.maxsize)  # the store is there: no bound to enforce
    except BinbenchError:
        return (), None
    return (tuple(sorted(loaded.search["space"])) if loaded.search else (),
            {t.key: t.budget for t in loaded.trials})


def report(suite: str, results_dir: str | Path | None = None, tracking_uri: str | None = None,
           out_dir: str | Path | None = None, notes: list[str] | None = None
           ) -> tuple[Collected, dict[str, Path], list[Path]]:
    from bench.suite import find_suite, suite_identity
    from bench.track.store import default_tracking_uri, probe_server, reference_hint, suite_folder

    try:
        find_suite(suite)
    except BinbenchError:
        name = suite  # no suite file: the store alone names the suite
    else:
        name = suite_identity(suite)[1]  # checked as `suite run` checks it (a shipped name, a safe name)
    results = Path(results_dir or suite_folder(name))  # the user's own runs by default, never results/
    uri = tracking_uri or default_tracking_uri(results)
    probe_server(uri)  # a dead tracking server: one line in seconds, not minutes of MLflow's retries
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise BinbenchError(f"no MLflow store at {uri[len('sqlite:///'):]}: run `binbench suite run {suite}` first, "
                            "or pass --results-dir / --tracking-uri" + ("" if results_dir else reference_hint(name)))
    search_keys, trials = _suite_facts(suite)
    out = Path(out_dir or results)
    out.mkdir(parents=True, exist_ok=True)
    c = collect(uri, name, search_keys, trials)
    c = dataclasses.replace(c, notes=[*c.notes, *notes_mod.merged(out, notes or [])])  # stored notes kept
    t = tables(c, out)
    paths = write_tables(c, out, t)
    captioned = write_captioned(c, out)
    figs = [p for p, _caption in captioned]
    paths["html"] = write_html(c, t, out, captioned)
    if (out / notes_mod.FILE).is_file():
        paths["notes"] = out / notes_mod.FILE
    # nothing is written into the store: a report only reads it (a committed reference store stays as it was);
    # which store and which of its executions it read is in the report's own provenance lines
    return c, paths, figs

__all__ = ["CELL", "DIAG", "FLAG", "LATE_GAIN", "LAYER_METRIC", "Collected", "Tables", "caption", "collect",
           "discrimination", "display_label", "flagged_cells", "holm", "leaderboard", "legend", "lift_table",
           "md_table", "method_label", "paired", "paired_p", "provenance", "published_table", "reference", "report",
           "setup_lines", "summary_lines", "t_interval", "tables", "write_figures", "write_html", "write_tables"]
