"""The report's document model: headings, paragraphs, bullet lists, tables and images.

One model, three renderings (xopt.report.render): the terminal (rich), Markdown and one
self-contained HTML file. A table cell is a string, or a `Mark` to highlight it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mark:
    """A highlighted cell (the worst language of a variant, ...)."""
    text: str
    why: str = "worst"


@dataclass(frozen=True)
class Column:
    name: str
    justify: str = "left"      # terminal alignment; Markdown and HTML align by their own rules


@dataclass
class Table:
    columns: list            # Column or str (a left-aligned column of that name)
    rows: list[list] = field(default_factory=list)     # cells: str or Mark
    title: str | None = None
    notes: list[str] = field(default_factory=list)     # paragraphs shown after the table

    def __post_init__(self):
        self.columns = [c if isinstance(c, Column) else Column(c) for c in self.columns]

    @property
    def header(self) -> list[str]:
        return [c.name for c in self.columns]

    def add_row(self, *cells) -> None:
        self.rows.append(list(cells))


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list


@dataclass(frozen=True)
class Image:
    name: str       # a PNG file in the report's directory
    alt: str


class Doc:
    """An ordered list of blocks; `xopt.report.render` renders it (terminal, markdown, html)."""

    def __init__(self):
        self.blocks: list = []

    def h(self, level: int, text: str):
        self.blocks.append(Heading(level, text))

    def p(self, text: str):
        self.blocks.append(Para(text))

    def ul(self, items: list[str]):
        if items:
            self.blocks.append(Bullets(list(items)))

    def table(self, table: Table):
        self.blocks.append(table)

    def img(self, name: str, alt: str):
        self.blocks.append(Image(name, alt))
