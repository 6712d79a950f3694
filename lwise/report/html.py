"""Self-contained HTML tables for the report.

Snakemake 9's report shows a result by its MIME type: images inline, HTML in a frame, anything
else (CSV and TSV included) as plain text (`snakemake/report/html_reporter/template/components/
abstract_view_manager.js`). A table people read is therefore written as one HTML page with its
style inline and no external resources.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from lwise.core.atomic import atomic_path

__all__ = ["Table", "format_number", "page", "write_page"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.2em;
       color: #1d232a; background: #fff; }
h1 { font-size: 1.25em; margin: 0 0 .4em 0; }
h2 { font-size: 1.05em; margin: 1.4em 0 .4em 0; }
p.note { max-width: 60em; color: #444; font-size: .92em; }
.synthetic { background: #fff2cc; border: 1px solid #d6a500; padding: .5em .8em;
             font-weight: 600; max-width: 60em; }
table { border-collapse: collapse; font-size: .9em; margin-bottom: .6em; }
th, td { border-bottom: 1px solid #ddd; padding: .3em .7em; }
th { background: #f1f3f5; text-align: left; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:hover td { background: #f8f9fa; }
span.sub { color: #666; font-size: .85em; }
"""


def format_number(value, digits: int = 3) -> str:
    """A number for a table cell: `digits` significant decimals for floats, integers as they
    are, an empty cell for NaN."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class Table:
    """One table of a page: a title, the rows (cells already formatted, or numbers), and a note
    under it. Columns named in `numeric` are right-aligned; a cell's later lines are set smaller."""

    title: str | None
    frame: pd.DataFrame
    note: str | None = None
    numeric: Sequence[str] = field(default_factory=tuple)

    def render(self) -> str:
        parts = []
        if self.title:
            parts.append(f"<h2>{html.escape(self.title)}</h2>")
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.frame.columns)
        rows = []
        for values in self.frame.itertuples(index=False):
            cells = []
            for column, value in zip(self.frame.columns, values, strict=True):
                cls = ' class="num"' if column in self.numeric else ""
                text = value if isinstance(value, str) else format_number(_python(value))
                cells.append(f"<td{cls}>{_cell_html(text)}</td>")
            rows.append("<tr>" + "".join(cells) + "</tr>")
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        if self.note:
            parts.append(f'<p class="note">{html.escape(self.note)}</p>')
        return "\n".join(parts)


def _cell_html(text: str) -> str:
    """A cell's text; lines after the first (e.g. a percentile range) in smaller grey type."""
    first, *rest = text.split("\n")
    extra = "".join(f'<br><span class="sub">{html.escape(line)}</span>' for line in rest)
    return html.escape(first) + extra


def _python(value):
    """numpy scalars as Python ones, so formatting sees int/float/bool."""
    return value.item() if hasattr(value, "item") else value


def page(title: str, tables: Sequence[Table], *, intro: str | None = None, synthetic=False) -> str:
    """A whole HTML page: the title, a banner when the data are simulated, an introduction and
    the tables."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if synthetic:
        parts.append(
            '<p class="synthetic">SYNTHETIC: these numbers come from simulated observers, '
            "not from real human data.</p>"
        )
    if intro:
        parts.append(f'<p class="note">{html.escape(intro)}</p>')
    parts.extend(t.render() for t in tables)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_page(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
