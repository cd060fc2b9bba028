"""The HTML of the report: one self-contained file. Figures are inline base64 PNGs, the style is inline, and a
content security policy forbids every other resource, so opening the file makes no request of any kind.

Everything taken from a result file (subject names, paths, warnings, model ids) passes through `esc`."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass

from medtune.report.figures import Plot

NOT_MEASURED = "not measured"

# default-src 'none': no script, font, frame or fetch; images only from data: URIs; style only from this file
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a202c; margin: 0;
       background: #f7fafc; }
main { max-width: 900px; margin: 0 auto; padding: 1.5rem 1rem 4rem; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-top: .6rem; border-top: 3px solid #2b6cb0; }
h3 { font-size: 1.1rem; margin: 1.6rem 0 .4rem; }
h4 { font-size: .98rem; margin: 1.1rem 0 .3rem; }
.path, code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85em; word-break: break-all; }
.muted { color: #4a5568; }
.not-measured { color: #718096; font-style: italic; }
table { border-collapse: collapse; margin: .4rem 0 .8rem; font-size: .88rem; width: 100%; }
td { overflow-wrap: anywhere; }  /* a sha256 or a path must wrap, not widen the page */
th, td { text-align: left; padding: .2rem .5rem; border-bottom: 1px solid #e2e8f0; vertical-align: top; }
th { background: #edf2f7; }
table.pairs th { background: none; font-weight: 500; color: #4a5568; width: 32%; }
th.num { text-align: right; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: .8rem 0 1.2rem; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #e2e8f0; }
figcaption { font-size: .8rem; color: #4a5568; margin-top: .2rem; }
.warnings { background: #fff5f5; border-left: 4px solid #c53030; padding: .4rem .8rem; margin: .6rem 0; }
.warnings li { margin: .2rem 0; }
.verdict { font-weight: 600; background: #ebf8ff; border-left: 4px solid #2b6cb0; padding: .4rem .8rem; }
nav ul { columns: 2; font-size: .9rem; }
"""


@dataclass(frozen=True)
class Placed:
    """A figure at its place in the page: its element id (unique in the report) and its picture."""

    id: str
    plot: Plot


Block = str | Placed  # a section is a list of HTML fragments and figures, in page order


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def num(value, digits: int = 3) -> str:
    """A number as the tables show it; a missing one says so instead of printing None."""
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"


def interval(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "—"


def table(headers: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    """A table; every cell is escaped here, so callers pass raw text (numbers through `num` first); the columns
    in `numeric` are right-aligned."""
    head = "".join(f'<th class="num">{esc(header)}</th>' if i in numeric else f"<th>{esc(header)}</th>"
                   for i, header in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="num">{esc(cell)}</td>' if i in numeric else f"<td>{esc(cell)}</td>"
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def pairs(rows: list[tuple[str, object]]) -> str:
    """Labels and their values, one per row (both escaped)."""
    body = "".join(f'<tr><th scope="row">{esc(label)}</th><td>{esc(value)}</td></tr>' for label, value in rows)
    return f'<table class="pairs"><tbody>{body}</tbody></table>'


def heading(level: int, text: str, anchor: str | None = None) -> str:
    attribute = f' id="{esc(anchor)}"' if anchor else ""
    return f"<h{level}{attribute}>{esc(text)}</h{level}>"


def paragraph(text: str, css: str | None = None) -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<p{attribute}>{esc(text)}</p>"


def not_measured(what: str, how: str) -> str:
    return f'<p class="not-measured" data-missing="{esc(what)}">{esc(what)}: {NOT_MEASURED} ({esc(how)}).</p>'


def warnings_list(warnings: list[str]) -> str:
    if not warnings:
        return paragraph("No warnings.", "muted")
    items = "".join(f"<li>{esc(warning)}</li>" for warning in warnings)
    return f'<div class="warnings" role="note"><strong>Warnings</strong><ul>{items}</ul></div>'


def figure(placed: Placed, png_name: str) -> str:
    data = base64.b64encode(placed.plot.png).decode("ascii")
    return (f'<figure id="{esc(placed.id)}" data-figure="{esc(placed.plot.kind)}">'
            f'<img src="data:image/png;base64,{data}" alt="{esc(placed.plot.title)}">'
            f"<figcaption>{esc(placed.plot.title)} — also saved as <code>{esc(png_name)}</code></figcaption>"
            "</figure>")


def document(title: str, intro: str, contents: list[tuple[str, str]], body: str) -> str:
    """The whole page: head with the policy and style, the title, a table of contents, then the sections."""
    links = "".join(f'<li><a href="#{esc(anchor)}">{esc(label)}</a></li>' for anchor, label in contents)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body><main>"
            f"<h1>{esc(title)}</h1>{intro}<nav><ul>{links}</ul></nav>\n{body}\n</main></body></html>\n")
