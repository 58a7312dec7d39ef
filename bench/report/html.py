"""``report.html``: one self-contained page per suite (a table of contents, sortable tables, captioned figures
embedded as base64 PNG, provenance).

It opens from disk without a server and loads nothing: its one script (click a column header to sort the
table by it) and its style are inside the page, no font, stylesheet or script comes from elsewhere. Every
value is escaped (:func:`bench.report.escape.html`), so names and notes from run tags stay text.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd

from bench.report import escape

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}th,td{padding:.2em .6em;text-align:left}
thead th{border-bottom:2px solid #444;cursor:pointer;user-select:none}thead th:after{content:" \\2195";color:#aaa}
tbody tr:nth-child(odd){background:#f4f4f4}td.best{font-weight:bold}
figure{margin:1.5em 0}img{max-width:100%}figcaption,.legend{font-size:.85em;color:#444;max-width:60em}
nav.toc{background:#f7f7f7;padding:.5em 1em;border-left:3px solid #888}nav.toc li{margin:.1em 0}
ul.provenance li{margin:.15em 0}"""

#: sorts a table by the clicked column: numbers (the first number in a cell, "93.75 ± 0.12" by 93.75) before
#: text, a second click reverses; plain DOM calls, nothing loaded
SORT_JS = """document.querySelectorAll("table.sortable").forEach(function(t){
t.querySelectorAll("thead th").forEach(function(th,i){th.addEventListener("click",function(){
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),up=th.dataset.dir!=="up";
t.querySelectorAll("thead th").forEach(function(h){delete h.dataset.dir;});th.dataset.dir=up?"up":"down";
function key(r){var s=r.cells[i]?r.cells[i].textContent.trim():"";var m=s.replace(/\\u2212/g,"-")
.match(/^[-+]?\\d+(\\.\\d+)?/);return m?[0,parseFloat(m[0])]:[1,s.toLowerCase()];}
rows.sort(function(x,y){var a=key(x),c=key(y);if(a[0]!==c[0])return a[0]-c[0];
var d=a[1]<c[1]?-1:a[1]>c[1]?1:0;return up?d:-d;});rows.forEach(function(r){b.appendChild(r);});});});});"""

BOLD = ("Method", "Final-epoch Top-1")  # the cells a best row sets in bold, as in the Markdown table


def anchor(title: str) -> str:
    """An id for a section title: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def table(df: pd.DataFrame) -> str:
    """``df`` as a sortable HTML table; a ``_best`` column marks rows whose method and top-1 are set in bold."""
    cols = [c for c in df.columns if not str(c).startswith("_")]
    head = "".join(f'<th title="sort by this column">{escape.html(c)}</th>' for c in cols)
    rows = []
    for _, r in df.iterrows():
        bold = ' class="best"' if r.get("_best", False) else ""
        cells = "".join(f"<td{bold if c in BOLD else ''}>{escape.html(r[c])}</td>" for c in cols)
        rows.append(f"<tr>{cells}</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def figure(path: Path, caption: str) -> str:
    """A PNG embedded as a data URI with its caption (what it shows) and its file names."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = escape.html(path.name)
    return (f'<figure id="fig-{anchor(path.stem)}"><img alt="{escape.html(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{escape.html(caption)} <em>({name}; '
            f"{escape.html(path.with_suffix('.pdf').name)} beside it)</em></figcaption></figure>")


def _toc(entries: list[tuple[str, str]]) -> str:
    items = "".join(f'<li><a href="#{a}">{escape.html(t)}</a></li>' for t, a in entries)
    return f'<nav class="toc"><strong>Contents</strong><ol>{items}</ol></nav>'


def render(suite: str, provenance: list[str], checks: list[str], sections: list[tuple[str, pd.DataFrame, str]],
           figures: list[tuple[Path, str]]) -> str:
    """The page: contents, provenance and checks, each (title, table, legend) section, then each (figure,
    caption)."""
    title = escape.html(suite)
    body, toc = [], [("Provenance", "provenance")]
    body.append('<h2 id="provenance">Provenance</h2><ul class="provenance">'
                + "".join(f"<li>{escape.html(x)}</li>" for x in provenance) + "</ul>")
    if checks:
        toc.append(("Checks", "checks"))
        body.append('<h2 id="checks">Checks</h2><ul>' + "".join(f"<li>{escape.html(x)}</li>" for x in checks)
                    + "</ul>")
    for name, df, legend in sections:
        if len(df):
            toc.append((name, anchor(name)))
            body.append(f'<h2 id="{anchor(name)}">{escape.html(name)}</h2>{table(df)}'
                        f'<p class="legend">{escape.html(legend)}</p>')
    shown = [(p, cap) for p, cap in figures if p.suffix == ".png" and p.is_file()]
    if shown:
        toc.append(("Figures", "figures"))
        body.append('<h2 id="figures">Figures</h2><ol>' + "".join(
            f'<li><a href="#fig-{anchor(p.stem)}">{escape.html(cap.split(":")[0])}</a></li>' for p, cap in shown)
            + "</ol>" + "".join(figure(p, cap) for p, cap in shown))
    head = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}: binbench report</title>'
            f"<style>{STYLE}</style></head><body><h1>{title}: binbench report</h1>")
    return "\n".join([head, _toc(toc), *body, f"<script>{SORT_JS}</script>", "</body></html>", ""])


__all__ = ["SORT_JS", "anchor", "figure", "render", "table"]
