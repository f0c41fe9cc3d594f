"""Console rendering shared by the demos: a query response as a table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_response(console: Console, title: str, resp: dict[str, Any]) -> None:
    console.print(f"\n[bold]{title}[/bold]")
    table = Table(header_style="bold")
    for col in resp["columns"]:
        table.add_column(str(col["name"] if isinstance(col, dict) else col))
    for row in resp["rows"]:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
