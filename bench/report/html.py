"""``report.html``: one self-contained page per suite (tables, figures embedded as base64 PNG, provenance).

It opens from disk without a server and loads nothing: no script, no stylesheet or font from elsewhere. Every
value is escaped (:func:`bench.report.escape.html`), so names and notes from run tags stay text.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd

from bench.report import escape

STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.85em}th,td{padding:.2em .6em;text-align:left}
thead th{border-bottom:2px solid #444}tbody tr:nth-child(odd){background:#f4f4f4}td.best{font-weight:bold}
figure{margin:1em 0}img{max-width:100%}figcaption,.legend{font-size:.85em;color:#555}
ul.provenance li{margin:.15em 0}"""


BOLD = ("Method", "Final-epoch Top-1")  # the cells a best row sets in bold, as in the Markdown table


def table(df: pd.DataFrame) -> str:
    """``df`` as an HTML table; a ``_best`` column marks rows whose method and top-1 are set in bold."""
    cols = [c for c in df.columns if not str(c).startswith("_")]
    head = "".join(f"<th>{escape.html(c)}</th>" for c in cols)
    rows = []
    for _, r in df.iterrows():
        bold = ' class="best"' if r.get("_best", False) else ""
        cells = "".join(f"<td{bold if c in BOLD else ''}>{escape.html(r[c])}</td>" for c in cols)
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def figure(path: Path) -> str:
    """A PNG embedded as a data URI, captioned with its file name."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    name = escape.html(path.name)
    return (f'<figure><img alt="{name}" src="data:image/png;base64,{data}"><figcaption>{name} (PDF beside it)'
            "</figcaption></figure>")


def render(suite: str, provenance: list[str], checks: list[str], sections: list[tuple[str, pd.DataFrame, str]],
           figures: list[Path]) -> str:
    """The page: provenance and checks, then each (title, table, legend) section, then the figures."""
    title = escape.html(suite)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}: binbench report"
             f"</title><style>{STYLE}</style></head><body><h1>{title}: binbench report</h1>",
             "<h2>Provenance</h2><ul class=\"provenance\">"
             + "".join(f"<li>{escape.html(x)}</li>" for x in provenance) + "</ul>"]
    if checks:
        parts.append("<h2>Checks</h2><ul>" + "".join(f"<li>{escape.html(x)}</li>" for x in checks) + "</ul>")
    for name, df, legend in sections:
        if len(df):
            parts.append(f"<h2>{escape.html(name)}</h2>{table(df)}<p class=\"legend\">{escape.html(legend)}</p>")
    parts.append("<h2>Figures</h2>" + "".join(figure(p) for p in figures if p.suffix == ".png" and p.is_file()))
    parts.append("</body></html>\n")
    return "\n".join(parts)


__all__ = ["figure", "render", "table"]
