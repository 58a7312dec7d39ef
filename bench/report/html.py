"""``report.html``: one self-contained page per suite (a table of contents, sortable tables, captioned figures
embedded as base64 PNG, provenance).

It opens from disk without a server and loads nothing: its one script (click a column header to sort the
table by it) and its style are inside the page, no font, stylesheet or script comes from elsewhere. The page is
a jinja2 template with autoescaping on: every value is escaped, so names and notes from run tags stay text; only
the page's own style and script are inserted as they are.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pandas as pd

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

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ suite }}: binbench report</title><style>{{ style|safe }}</style>\
</head><body><h1>{{ suite }}: binbench report</h1>
<nav class="toc"><strong>Contents</strong><ol>{% for title, a in toc %}<li><a href="#{{ a }}">{{ title }}</a></li>\
{% endfor %}</ol></nav>
<h2 id="provenance">Provenance</h2><ul class="provenance">{% for x in provenance %}<li>{{ x }}</li>{% endfor %}</ul>
{% if checks %}<h2 id="checks">Checks</h2><ul>{% for x in checks %}<li>{{ x }}</li>{% endfor %}</ul>
{% endif %}{% for s in sections %}<h2 id="{{ s.id }}">{{ s.name }}</h2><table class="sortable"><thead><tr>\
{% for c in s.columns %}<th title="sort by this column">{{ c }}</th>{% endfor %}</tr></thead><tbody>\
{% for row in s.rows %}<tr>{% for cell, bold in row %}<td{% if bold %} class="best"{% endif %}>{{ cell }}</td>\
{% endfor %}</tr>{% endfor %}</tbody></table><p class="legend">{{ s.legend }}</p>
{% endfor %}{% if figures %}<h2 id="figures">Figures</h2><ol>{% for f in figures %}<li><a href="#{{ f.id }}">\
{{ f.title }}</a></li>{% endfor %}</ol>{% for f in figures %}<figure id="{{ f.id }}"><img alt="{{ f.caption }}" \
src="data:image/png;base64,{{ f.data }}"><figcaption>{{ f.caption }} <em>({{ f.png }}; {{ f.pdf }} beside it)</em>\
</figcaption></figure>{% endfor %}
{% endif %}<script>{{ script|safe }}</script>
</body></html>
"""


def anchor(title: str) -> str:
    """An id for a section title: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _section(name: str, df: pd.DataFrame, legend: str) -> dict[str, Any]:
    """A (title, table, legend) section for the template; a ``_best`` column marks rows whose method and top-1
    are set in bold, other columns starting with "_" are not shown."""
    cols = [c for c in df.columns if not str(c).startswith("_")]
    rows = [[(r[c], bool(r.get("_best", False)) and c in BOLD) for c in cols] for _, r in df.iterrows()]
    return {"id": anchor(name), "name": name, "columns": cols, "rows": rows, "legend": legend}


def _figure(path: Path, caption: str) -> dict[str, str]:
    """A PNG for the template: embedded as base64, with its caption (what it shows) and its file names."""
    return {"id": f"fig-{anchor(path.stem)}", "title": caption.split(":")[0], "caption": caption,
            "data": base64.b64encode(path.read_bytes()).decode("ascii"), "png": path.name,
            "pdf": path.with_suffix(".pdf").name}


def render(suite: str, provenance: list[str], checks: list[str], sections: list[tuple[str, pd.DataFrame, str]],
           figures: list[tuple[Path, str]]) -> str:
    """The page: contents, provenance and checks, each (title, table, legend) section, then each (figure,
    caption)."""
    import jinja2

    shown = [_section(*s) for s in sections if len(s[1])]
    figs = [_figure(p, cap) for p, cap in figures if p.suffix == ".png" and p.is_file()]
    toc = ([("Provenance", "provenance")] + ([("Checks", "checks")] if checks else [])
           + [(s["name"], s["id"]) for s in shown] + ([("Figures", "figures")] if figs else []))
    page = jinja2.Environment(autoescape=True, keep_trailing_newline=True).from_string(PAGE)
    return page.render(suite=suite, style=STYLE, script=SORT_JS, toc=toc, provenance=provenance, checks=checks,
                       sections=shown, figures=figs)


__all__ = ["PAGE", "SORT_JS", "anchor", "render"]
