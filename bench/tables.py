"""Tables on the terminal that stay legible at any width: rich's table where it fits, one block per row where it does
not. A CI log has no terminal, so rich assumes 80 columns there, and a wide table squeezed into them cuts every
column down to two or three letters; timing regressions are read in such logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text

UNLIMITED = 100_000  # a width no table reaches: what it measures with it is the width it needs


@dataclass
class Listing:
    """A table's content: ``rows`` of strings (rich markup allowed) under ``columns``. The first ``heading`` columns
    name a row: in the narrow layout they are its first line, the other columns follow as ``column value`` pairs."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    heading: int = 1
    right: frozenset[str] = frozenset()  # columns justified right in the table

    def table(self) -> Table:
        table = Table(title=self.title)
        for column in self.columns:
            table.add_column(column, justify="right" if column in self.right else "left")
        for row in self.rows:
            table.add_row(*row)
        return table


def show(console: Console, listing: Listing) -> None:
    """Print ``listing`` as a table when it fits the console's width without cutting a cell, else as blocks."""
    table = listing.table()
    natural = console.measure(table, options=console.options.update_width(UNLIMITED)).maximum
    if natural <= console.width:
        console.print(table)
        return
    console.print(listing.title, highlight=False, soft_wrap=True)
    indent = "    "
    for row in listing.rows:
        console.print("  " + " · ".join(row[:listing.heading]), highlight=False, soft_wrap=True)
        pairs = [f"{column} {value}" for column, value in zip(listing.columns[listing.heading:],
                                                               row[listing.heading:]) if value]
        for line in pack(pairs, max(20, console.width - len(indent)), "   "):
            console.print(indent + line, highlight=False, soft_wrap=True)


def pack(items: Sequence[str], width: int, separator: str) -> list[str]:
    """``items`` joined by ``separator`` into lines of at most ``width`` cells (an item longer than that alone on its
    line); an item is never split. Widths count what is shown, not the markup."""
    lines: list[str] = []
    current, used = "", 0
    for item in items:
        size = Text.from_markup(item).cell_len
        if current and used + len(separator) + size > width:
            lines.append(current)
            current, used = "", 0
        current, used = (current + separator + item, used + len(separator) + size) if current else (item, size)
    if current:
        lines.append(current)
    return lines
