"""Escaping of every value a report writes into Markdown, LaTeX or HTML.

Suite names, notes, descriptions, paths and tags come from files and run tags a user wrote: none of them may
become live markup (a ``\\input{...}`` in a suite name must print as text, a newline must not end a LaTeX
comment line or a Markdown table row, a ``<script>`` must not run in report.html).
"""

from __future__ import annotations

import html as _html
import unicodedata
from typing import Any

#: LaTeX text-mode replacements: the ten specials plus the symbols the tables use
_LATEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "%": r"\%", "#": r"\#",
          "_": r"\_", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
          ">": r"\textgreater{}", "|": r"\textbar{}", "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "—": "---",
          "−": "-", "†": r"$^\dagger$", "↑": r"$\uparrow$", "×": r"$\times$", "≤": r"$\leq$", "≥": r"$\geq$"}


def one_line(value: Any) -> str:
    """``value`` as text on one line: every run of whitespace (newlines, carriage returns, Unicode line and
    paragraph separators) becomes one space, other control characters are dropped."""
    text = " ".join(str(value).split())
    return "".join(ch for ch in text if ch.isprintable())


def _latex_char(ch: str) -> str:
    if ch in _LATEX:
        return _LATEX[ch]
    if ch.isascii():
        return ch
    # pdflatex stops on characters its input encoding does not define: keep the ASCII part of the character
    # (é -> e), else a visible placeholder
    return unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode() or "?"


def latex(value: Any) -> str:
    """``value`` as LaTeX text that typesets literally: no command, group, math or comment survives."""
    return "".join(_latex_char(ch) for ch in one_line(value))


def latex_comment(value: Any) -> str:
    """A ``%`` comment line: TeX ignores the rest of a line after ``%``, so only a line break could escape it."""
    return "% " + one_line(value)


def markdown(value: Any) -> str:
    """``value`` for a Markdown line or table cell (never at a line's start): no row break, no column break, no
    raw HTML, no code span, emphasis or inline link."""
    text = one_line(value).replace("\\", "\\\\")
    for ch in "`*|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace("](", "]\\(")  # no "<": no tag; a lone ">" opens nothing mid-line


def html(value: Any) -> str:
    """``value`` as HTML text or attribute value."""
    return _html.escape(str(value), quote=True)


__all__ = ["html", "latex", "latex_comment", "markdown", "one_line"]


def md_table(df: Any, bold: tuple[str, ...] = ("Method", "Final-epoch Top-1")) -> str:
    """A DataFrame as a Markdown table, every cell escaped; a row whose ``_best`` is true has its ``bold``
    columns in bold; columns starting with "_" are not shown. (Here, beside the escaping, so that every report
    module can write tables without importing the report package: that was an import cycle.)"""
    cols = [c for c in df.columns if not c.startswith("_")]
    lines = ["| " + " | ".join(markdown(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        cells = [markdown(r[c]) for c in cols]
        if r.get("_best", False):
            cells = [f"**{x}**" if c in bold else x for c, x in zip(cols, cells, strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
