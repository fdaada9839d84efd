"""What the CLI prints: tables that fit an 80-column terminal (rich), or JSON for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any]], Any]
    # Ids are what users copy into the next command: never cut or wrapped.
    whole: bool = False


def human_size(n: int | None) -> str:
    if not n:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if size >= 10 or unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def print_table(
    rows: Sequence[dict[str, Any]], columns: Sequence[Column], *, footer: str = "", empty: str = ""
) -> None:
    if not rows:
        print(empty)
        return
    # Borderless like Ollama's listings: borders cost columns an 80-wide terminal doesn't have.
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    for c in columns:
        table.add_column(c.header, no_wrap=c.whole, overflow="fold")
    for row in rows:
        table.add_row(*("" if (v := c.value(row)) is None else str(v) for c in columns))
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped: rich would assume 80 columns and squeeze long ids; the table takes only what it needs.
        console = Console(highlight=False, width=max(console.width, 200), file=sys.stdout)
    console.print(table)
    if footer:
        console.print(footer)
