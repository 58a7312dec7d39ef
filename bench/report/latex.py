"""``leaderboard.tex``: the leaderboard as a table a paper can ``\\input`` as is.

A compact pivot (rows: methods by display name; columns: network, then bits), final-epoch top-1 mean ± std over
seeds in siunitx S columns, the best method of each column in bold, published numbers in their own column where
any exist, written by pandas' ``Styler.to_latex`` with booktabs rules. Every value is escaped
(:func:`bench.report.escape.latex`) before it reaches the Styler, which therefore runs with escaping off.
The float is sized for a two-column paper: one column wide while the table fits there, ``table*`` beyond.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from bench.report import escape

PACKAGES = ("booktabs", "siunitx")
#: mean (up to 100.00) and a separate uncertainty (up to 99.99), aligned on the decimal points
TOP1_COLUMN = "S[table-format=3.2(2.2)]"
PUBLISHED_COLUMN = "S[table-format=3.2]"
#: bold S cells need siunitx to carry the text weight into its math output; footnotesize and 4pt column gaps
#: let a method and two mean ± std columns fit one column of a two-column article
SETUP = ("\\footnotesize\\setlength{\\tabcolsep}{4pt}\n\\sisetup{separate-uncertainty, table-align-uncertainty, "
         "reset-text-series=false, text-series-to-math=true}\n")
#: widths in pt at footnotesize, 4pt gaps (measured with pdflatex): a method name's character, a mean ± std
#: column, a published column; a two-column article's column is 229.5pt wide, its text 469pt
CHAR_PT, TOP1_PT, PUBLISHED_PT, COLUMN_PT, TEXT_PT = 4.5, 62.0, 33.0, 229.5, 469.0
MISSING = "{--}"  # braces: an S column typesets it as text


def _number(mean: float, std: float) -> str:
    if not _known(mean):
        return MISSING
    return f"{mean:.2f} \\pm {std:.2f}" if _known(std) else f"{mean:.2f}"


def _known(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _column_keys(lb: pd.DataFrame) -> pd.DataFrame:
    """Each row's (top, sub) column: the network (with its dataset when the suite has several) over the bits
    (with the recipe when it has several); a dagger on bits of cells that cannot discriminate estimators."""
    many_ds, many_recipes = lb.dataset.nunique() > 1, lb.recipe.nunique() > 1
    top = lb.network + (" (" + lb.dataset + ")" if many_ds else "")
    sub = lb.bits + (" " + lb.recipe if many_recipes else "")
    flagged = lb.cell_check.eq("cannot discriminate") if "cell_check" in lb else False
    return lb.assign(_top=top, _sub=sub, _flag=flagged)


def _fp_rows(lb: pd.DataFrame) -> pd.DataFrame:
    """The FP baseline under every bits column of its network, dataset and recipe: it is their reference."""
    binary, fp = lb[lb.role != "baseline"], lb[lb.role == "baseline"]
    cols = binary[["dataset", "network", "recipe", "_top", "_sub"]].drop_duplicates()
    spread = fp.drop(columns=["_top", "_sub"]).merge(cols, on=["dataset", "network", "recipe"])
    alone = fp[~fp.set_index(["dataset", "network", "recipe"]).index.isin(spread.set_index(
        ["dataset", "network", "recipe"]).index)]  # a network run only in full precision keeps its own column
    return pd.concat([spread, alone])


def pivot(lb: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(cells, bold mask, column formats): LaTeX source of each cell, rows by display name in leaderboard
    order, a published column beside a top-1 column only where some row has a published number."""
    lb = _column_keys(lb)
    lb = pd.concat([_fp_rows(lb), lb[lb.role != "baseline"]])
    rows = list(dict.fromkeys(lb.display))
    flags = lb.groupby(["_top", "_sub"])["_flag"].any()
    data: dict[tuple[str, str], dict[str, str]] = {}
    bold: dict[tuple[str, str], dict[str, bool]] = {}
    formats = []
    for (top, sub), g in lb.groupby(["_top", "_sub"], sort=False):
        head = (escape.latex(top), escape.latex(sub) + ("$^\\dagger$" if flags[(top, sub)] else ""))
        data[head] = {escape.latex(r.display): _number(r.top1_mean, r.top1_std) for r in g.itertuples()}
        bold[head] = {escape.latex(r.display): bool(r.best) for r in g.itertuples()}
        formats.append(TOP1_COLUMN)
        if g.published.notna().any():
            pub = (head[0], "pub." + "{}" * len(formats))  # empty groups: unique keys, no width
            data[pub] = {escape.latex(r.display): f"{r.published:g}" if _known(r.published) else MISSING
                         for r in g.itertuples()}
            formats.append(PUBLISHED_COLUMN)
    index = [escape.latex(r) for r in rows]
    cells = pd.DataFrame(data, index=index).fillna(MISSING)
    mask = pd.DataFrame(bold, index=index).reindex(columns=cells.columns).map(lambda v: v is True)
    cells.columns = pd.MultiIndex.from_tuples(cells.columns)
    mask.columns = cells.columns
    return cells, mask, formats


def _label(suite: str) -> str:
    return "tab:binbench-" + (re.sub(r"[^a-z0-9]+", "-", suite.lower()).strip("-") or "suite")


def _width(lb: pd.DataFrame, formats: list[str]) -> float:
    """The tabular's width in pt, from measured character and column widths."""
    return CHAR_PT * max(map(len, lb.display)) + 8 + sum(TOP1_PT if f == TOP1_COLUMN else PUBLISHED_PT
                                                         for f in formats)


def _chunks(lb: pd.DataFrame) -> list[pd.DataFrame]:
    """The leaderboard split by network into tabulars that each fit the text width of a two-column page, so
    that a suite of many networks stacks its tabulars rather than running off the page."""
    keys = _column_keys(lb)
    chunks: list[list[str]] = []
    for top in dict.fromkeys(keys._top):
        if chunks and _width(lb, pivot(lb[keys._top.isin([*chunks[-1], top])])[2]) <= TEXT_PT:
            chunks[-1].append(top)
        else:
            chunks.append([top])
    return [lb[keys._top.isin(tops)] for tops in chunks]


def _tabular(lb: pd.DataFrame) -> str:
    """One tabular (booktabs rules, S columns, bold best) by ``Styler.to_latex``; a rule between the references
    (FP, control) and the methods."""
    cells, mask, formats = pivot(lb)
    styler = cells.style.apply(lambda _: mask.replace({True: "bfseries: ;", False: ""}), axis=None)
    tex = styler.to_latex(column_format="l" + "".join(formats), hrules=True, multicol_align="c", siunitx=True)
    methods = [escape.latex(m) for m in lb.loc[lb.role == "method", "display"] if escape.latex(m) in cells.index]
    if methods and (lb.role != "method").any():
        first = methods[0] + " &"
        tex = tex.replace("\n" + first, "\n\\midrule\n" + first, 1)
    return tex


def render(lb: pd.DataFrame, suite: str, caption: str, head: list[str], notes: list[str]) -> str:
    """The whole ``leaderboard.tex``: comment lines (packages, provenance), then one float (``table`` while it
    fits one column of a two-column paper, else ``table*``) with the caption, label, tabulars and notes."""
    chunks = _chunks(lb)
    wide = len(chunks) > 1 or _width(lb, pivot(lb)[2]) > COLUMN_PT
    env = "table*" if wide else "table"
    lines = [escape.latex_comment(f"needs \\usepackage{{{p}}}") for p in PACKAGES]
    lines += [escape.latex_comment(h) for h in head]
    lines += [f"\\begin{{{env}}}[t]", "\\centering", SETUP.rstrip("\n"), f"\\caption{{{escape.latex(caption)}}}",
              f"\\label{{{_label(suite)}}}", "\\par\\medskip\n".join(_tabular(g) for g in chunks)]
    lines += [f"\\par\\smallskip\\footnotesize {escape.latex(n)}" for n in notes]
    return "\n".join([*lines, f"\\end{{{env}}}", ""])


__all__ = ["PACKAGES", "pivot", "render"]
