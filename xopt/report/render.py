"""Renderers of the document model (xopt.report.table): one each for the terminal (rich),
Markdown and HTML. The HTML file is self-contained: images are embedded, nothing is fetched."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from xopt.report.table import Bullets, Doc, Heading, Image, Mark, Para, Table

# A table wider than the window scrolls inside its own box (.wide), so the page keeps the window's
# width; figures shrink to it.
HTML_STYLE = ("<style>body{font-family:sans-serif;margin:1.5em;background:#fff;color:#111}"
              ".wide{max-width:100%;overflow-x:auto;margin:.5em 0 1.5em}"
              "table{border-collapse:collapse}figure{margin:1em 0}td,th{border:1px solid #bbb;padding:2px 6px;"
              "font-size:13px;text-align:right;white-space:nowrap}td:first-child,th:first-child{text-align:left}"
              "th{background:#eef}td.worst{background:#fdd;font-weight:bold}img{max-width:100%}</style>")


def to_rich(table: Table):
    """A rich.table.Table (marked cells in bold red)."""
    from rich.table import Table as RichTable

    t = RichTable(title=table.title, title_justify="left", caption=" ".join(table.notes) or None)
    for c in table.columns:
        t.add_column(c.name, justify=c.justify)
    for r in table.rows:
        t.add_row(*(f"[bold red]{c.text}[/]" if isinstance(c, Mark) else c for c in r))
    return t


def _md_table(t: Table) -> list[str]:
    cell = lambda c: (f"**{c.text}**" if isinstance(c, Mark) else c).replace("|", "\\|")  # noqa: E731
    out = [f"**{t.title}**", ""] if t.title else []
    out += ["| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.columns)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in t.rows] + [""]
    for note in t.notes:
        out += [note, ""]
    return out


def to_markdown(doc: Doc) -> str:
    out = []
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {x}" for x in b.items] + [""]
        elif isinstance(b, Table):
            out += _md_table(b)
        elif isinstance(b, Image):
            out += [f"![{b.alt}]({b.name})", ""]
    return "\n".join(out)


def _html_table(t: Table) -> list[str]:
    e = html.escape
    rows = ["<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>"]
    for r in t.rows:
        rows.append("<tr>" + "".join(f'<td class="{e(c.why)}">{e(c.text)}</td>' if isinstance(c, Mark)
                                     else f"<td>{e(c)}</td>" for c in r) + "</tr>")
    caption = f"<caption>{e(t.title)}</caption>" if t.title else ""
    return ['<div class="wide"><table>' + caption + "".join(rows) + "</table></div>"] + [f"<p>{e(n)}</p>" for n in t.notes]


def to_html(doc: Doc, image_dir: Path, title: str = "xopt report") -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           HTML_STYLE, "</head><body>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            out += _html_table(b)
        elif isinstance(b, Image):
            data = base64.b64encode((Path(image_dir) / b.name).read_bytes()).decode()
            out.append(f'<figure><img alt="{e(b.alt)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(b.alt)}</figcaption></figure>")
    return "\n".join(out + ["</body></html>", ""])
