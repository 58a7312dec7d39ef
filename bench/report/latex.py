"""``leaderboard.tex``: the leaderboard as tables a paper can ``\\input`` as they are.

Two floats. The first is laid out like the BNN papers' result tables: Network | Method | W/A | Top-1 (and a
published column where any published number exists), FP first in each network, a rule between networks, numbers as
``93.75 ± 0.12``; bold marks the best method of its network and bits only where it is ahead of the next with a
paired 95% interval above 0, else every tied leader is bold and a footnote says so. The second is the compact
pivot (methods against network and bits). Both need only ``booktabs``. Every value is escaped
(:func:`bench.report.escape.latex`). The caption says the budget and seeds; the provenance (commands, commits,
hardware), with paths relative to the results folder, is a comment block above the floats. A float is one
column wide while its tabular fits a two-column article's column, ``table*`` beyond.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pandas as pd

from bench.report import escape

PACKAGES = ("booktabs",)
#: footnotesize and 3pt column gaps: a BiPer-style table of every built-in fits one column of a two-column article
SETUP = "\\footnotesize\\setlength{\\tabcolsep}{3pt}"
#: widths in pt at footnotesize (measured with pdflatex): a character of text, a "93.75 ± 0.12" cell, a
#: published number, the gap between columns; a two-column article's column is 229.5pt wide, its text 469pt
CHAR_PT, TOP1_PT, PUBLISHED_PT, GAP_PT, COLUMN_PT, TEXT_PT = 4.4, 50.0, 22.0, 6.0, 229.5, 469.0
MISSING = "--"
TIE_NOTE = ("Bold: the best method of its network and bits, alone where it is ahead of the next with a paired 95% "
            "Student-t interval above 0 over the same seeds; {ties}")


def _known(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def number(mean: float, std: float, bold: bool = False) -> str:
    """``93.75 ± 0.12`` in math mode (one weight for every glyph: ``\\boldmath`` sets the ± bold too); a mean
    under 10 is padded so that the column's decimal points align."""
    if not _known(mean):
        return MISSING
    pad = "\\phantom{0}" if abs(mean) < 10 else ""
    body = f"{pad}{mean:.2f} \\pm {std:.2f}" if _known(std) else f"{pad}{mean:.2f}"
    return f"{{\\boldmath${body}$}}" if bold else f"${body}$"


def _wa(bits: str) -> str:
    """W1A32 -> 1/32 (the papers' W/A column)."""
    m = re.fullmatch(r"W(\d+)A(\d+)", bits)
    return f"{m.group(1)}/{m.group(2)}" if m else bits


def _network(lb: pd.DataFrame) -> pd.Series:
    """The network column: the network, with its dataset when the suite has several."""
    return lb.network + (" (" + lb.dataset + ")" if lb.dataset.nunique() > 1 else "")


def c_method(lb: pd.DataFrame) -> pd.Series:
    """The method column: the display name, with the recipe when the suite has several."""
    return lb.display + (" (" + lb.recipe + ")" if lb.recipe.nunique() > 1 else "")


def _flagged(lb: pd.DataFrame) -> pd.Series:
    return lb.cell_check.eq("cannot discriminate") if "cell_check" in lb else pd.Series(False, index=lb.index)


def rows(lb: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(network, cells of each row) in the papers' order: FP first, then per bits the control and the methods;
    the network named on its first row only."""
    lb = lb.assign(c_net=_network(lb), c_method=c_method(lb), c_flag=_flagged(lb))
    has_pub = lb.published.notna().any()
    out = []
    for net in dict.fromkeys(lb.c_net):
        g = lb[lb.c_net == net]
        order = pd.concat([g[g.role == "baseline"].drop_duplicates("recipe"), g[g.role != "baseline"]])
        for k, r in enumerate(order.itertuples()):
            wa = _wa(r.bits) + ("$^\\dagger$" if r.c_flag else "")
            cells = [escape.latex(net) if k == 0 else "", escape.latex(r.c_method), wa,
                     number(r.top1_mean, r.top1_std, bold=bool(r.best))]
            if has_pub:
                cells.append(f"{r.published:.2f}" if _known(r.published) else MISSING)
            out.append((net, cells))
    return out


def width(lb: pd.DataFrame) -> float:
    """The paper-style tabular's width in pt, from measured character and column widths."""
    text = [max(map(len, _network(lb)), default=0), max(len("Method"), max(map(len, c_method(lb)), default=0)), 4]
    cols = CHAR_PT * sum(text) + TOP1_PT + (PUBLISHED_PT if lb.published.notna().any() else 0)
    return cols + GAP_PT * (len(text) + 1 + lb.published.notna().any())


def paper_tabular(lb: pd.DataFrame) -> str:
    """The paper-style tabular: booktabs rules, a midrule per network."""
    has_pub = lb.published.notna().any()
    head = ["Network", "Method", "W/A", "Top-1 (\\%)"] + (["Pub."] if has_pub else [])
    lines = ["\\begin{tabular}{ll" + "c" + "r" + ("r" if has_pub else "") + "}", "\\toprule",
             " & ".join(head) + " \\\\"]
    last: tuple[str, str] | None = None
    for net, cells in rows(lb):
        if last is None or net != last[0]:
            lines.append("\\midrule")
        elif cells[2] != last[1]:  # a thin rule where W/A changes within a network
            lines.append(f"\\cmidrule(l){{2-{len(head)}}}")
        last = (net, cells[2])
        lines.append(" & ".join(cells) + " \\\\")
    return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"])


def pivot(lb: pd.DataFrame) -> tuple[list[str], list[tuple[str, str]], dict[tuple[str, str], dict[str, str]]]:
    """(row names, column keys (network, W/A), cell text): methods by display name against network and bits,
    FP repeated under every bits column of its network (it is their reference)."""
    lb = lb.assign(c_net=_network(lb), c_method=c_method(lb), c_flag=_flagged(lb))
    binary, fp = lb[lb.role != "baseline"], lb[lb.role == "baseline"]
    cols = list(dict.fromkeys(zip(binary.c_net, binary.bits, strict=True))) or list(
        dict.fromkeys(zip(fp.c_net, fp.bits, strict=True)))
    flags = lb.groupby(["c_net", "bits"])["c_flag"].any()
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for net, bits in cols:
        g = pd.concat([fp[fp.c_net == net], binary[(binary.c_net == net) & (binary.bits == bits)]])
        key = (net, _wa(bits) + ("$^\\dagger$" if flags.get((net, bits), False) else ""))
        cells[key] = {r.c_method: number(r.top1_mean, r.top1_std, bold=bool(r.best)) for r in g.itertuples()}
    names = list(dict.fromkeys(lb.sort_values("role", key=lambda s: s.map(
        {"baseline": 0, "control": 1, "method": 2}), kind="stable").c_method))
    return names, list(cells), cells


def pivot_tabular(lb: pd.DataFrame) -> str:
    names, keys, cells = pivot(lb)
    nets = list(dict.fromkeys(k[0] for k in keys))
    top = ["", *(f"\\multicolumn{{{sum(k[0] == n for k in keys)}}}{{c}}{{{escape.latex(n)}}}" for n in nets)]
    rules = []
    start = 2
    for n in nets:
        span = sum(k[0] == n for k in keys)
        rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    lines = ["\\begin{tabular}{l" + "r" * len(keys) + "}", "\\toprule", " & ".join(top) + " \\\\", "".join(rules),
             " & ".join(["Method", *(k[1] for k in keys)]) + " \\\\", "\\midrule"]
    refs = sum(1 for n in names if n == "FP" or n.startswith("control"))
    for i, name in enumerate(names):
        if i == refs and 0 < refs < len(names):
            lines.append("\\midrule")
        lines.append(" & ".join([escape.latex(name), *(cells[k].get(name, MISSING) for k in keys)]) + " \\\\")
    return "\n".join([*lines, "\\bottomrule", "\\end{tabular}"])


def pivot_width(lb: pd.DataFrame) -> float:
    names, keys, _cells = pivot(lb)
    return CHAR_PT * max(map(len, names), default=6) + (TOP1_PT + GAP_PT) * len(keys) + 2 * GAP_PT


def label(suite: str, suffix: str = "") -> str:
    return "tab:binbench-" + (re.sub(r"[^a-z0-9]+", "-", suite.lower()).strip("-") or "suite") + suffix


def _float(tabular: str, wide: bool, caption: str, lab: str, notes: list[str]) -> list[str]:
    env = "table*" if wide else "table"
    lines = [f"\\begin{{{env}}}[t]", "\\centering", SETUP, f"\\caption{{{escape.latex(caption)}}}",
             f"\\label{{{lab}}}", tabular]
    lines += [f"\\par\\smallskip\\parbox{{\\linewidth}}{{\\footnotesize {escape.latex(n)}}}" for n in notes]
    return [*lines, f"\\end{{{env}}}"]


def tie_note(lb: pd.DataFrame) -> str:
    """The footnote on bold: which cells' leaders are tied (no paired interval above 0 between them)."""
    tied = lb[lb.tied & lb.best]
    if tied.empty:
        return TIE_NOTE.format(ties="here every best method is.")
    groups = "; ".join(f"{net} {_wa(bits)}: {', '.join(g.display)}" for (net, bits), g in
                       tied.groupby([_network(tied), "bits"], sort=False))
    return TIE_NOTE.format(ties=f"tied leaders share the bold ({groups}).")


def render(lb: pd.DataFrame, suite: str, caption: str, head: list[str], notes: list[str]) -> str:
    """The whole ``leaderboard.tex``: the provenance comment block, the paper-style float, the pivot float."""
    lines = [escape.latex_comment(f"needs \\usepackage{{{p}}}") for p in PACKAGES]
    lines += [escape.latex_comment(h) for h in head]
    notes = [tie_note(lb), *notes]
    lines += _float(paper_tabular(lb), width(lb) > COLUMN_PT, caption, label(suite), notes)
    lines += _float(pivot_tabular(lb), pivot_width(lb) > COLUMN_PT, caption + " The same numbers, methods against "
                    "network and W/A.", label(suite, "-pivot"), notes[:1])
    return "\n".join([*lines, ""])


__all__ = ["PACKAGES", "number", "paper_tabular", "pivot", "pivot_tabular", "render", "rows"]
