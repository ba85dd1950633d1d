"""How listings print: ``--format table|json|ndjson`` on every command that lists things.

``json`` and ``ndjson`` print the API's own objects, unchanged, for scripts. ``table``
is for people: a rich table on a terminal; elsewhere (a pipe, a file) plain aligned
columns whose cells are never wrapped into fragments or cut, one row per line.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import click
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from service.cli._common import console, status_markup

FORMATS = ("table", "json", "ndjson")


def format_option(*formats: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--format`` (default ``table``) with the given choices (default: all three)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(formats or FORMATS),
        default="table",
        show_default=True,
        help="table: for people; json: one JSON array; ndjson: one JSON object per line (the API's objects).",
    )


@dataclass(frozen=True)
class Column:
    """A table column: its header, the cell text of a row, and whether the cell is a status."""

    header: str
    text: Callable[[dict[str, Any]], str]
    status: bool = False
    right: bool = False


def print_items(
    fmt: str, items: Sequence[dict[str, Any]], columns: Sequence[Column], *, title: str = ""
) -> None:
    """Print ``items`` (API objects) in ``fmt``: as JSON, NDJSON, or a table of ``columns``."""
    if fmt == "json":
        sys.stdout.write(json.dumps(list(items), indent=2, ensure_ascii=False) + "\n")
    elif fmt == "ndjson":
        for item in items:
            sys.stdout.write(json.dumps(item, separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        print_table([[c.text(item) for c in columns] for item in items], columns, title=title)


def print_table(
    rows: Iterable[Sequence[str]], columns: Sequence[Column], *, title: str = "", markup: bool = False
) -> None:
    """A rich table on a terminal; plain aligned columns, never wrapped, anywhere else.

    ``markup``: the cells are rich markup already (colours, escaped text); off a terminal only
    their text is printed."""
    rows = list(rows)
    if markup and not console.is_terminal:
        rows = [[Text.from_markup(cell).plain for cell in row] for row in rows]
    elif markup:
        table = Table(title=title or None)
        for c in columns:
            table.add_column(c.header, justify="right" if c.right else "left", overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    if console.is_terminal:
        table = Table(title=title or None)
        for c in columns:
            table.add_column(c.header, justify="right" if c.right else "left", overflow="fold")
        for row in rows:
            table.add_row(
                *(status_markup(v) if c.status else escape(v) for c, v in zip(columns, row, strict=True))
            )
        console.print(table)
        return
    lines = [[c.header for c in columns], *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    if title:
        sys.stdout.write(f"{title}\n")
    for line in lines:
        cells = [v.rjust(w) if c.right else v.ljust(w) for c, v, w in zip(columns, line, widths, strict=True)]
        sys.stdout.write("  ".join(cells).rstrip() + "\n")


def ms(value: float | None) -> str:
    """``1234 ms``; empty for none."""
    return "" if value is None else f"{value:.0f} ms"


def one_line(value: Any, width: int = 80) -> str:
    """Text on one line, cut to ``width`` with an ellipsis (errors can be long and multi-line)."""
    text = "" if value is None else str(value).replace("\r", " ").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"
