"""Render query results as a terminal table, JSON or CSV."""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "csv")


def _plain(value: Any) -> Any:
    """A JSON value for any DuckDB value: an INTERVAL as its seconds (DuckDB counts a month as 30
    days), a BLOB as base64, NaN and infinity as null (JSON has neither), other types as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, str) else json.dumps(_plain(k)): _plain(v) for k, v in value.items()}
    return str(value)  # UUID and whatever a newer DuckDB adds


def _csv_cell(value: Any) -> Any:
    """As DuckDB's own CSV writes them: nested values as JSON, booleans as true/false, NULL as nothing."""
    plain = _plain(value)
    if plain is None:
        return ""
    return json.dumps(plain, ensure_ascii=False) if isinstance(plain, list | dict | bool) else plain


def _table_cell(value: Any) -> Text:
    """Registry text is text: "[mmol/L]" or "[/]" in a cell is not Rich markup."""
    if value is None:
        return Text("")
    if isinstance(value, float):
        return Text(str(value))
    plain = _plain(value)  # booleans and nested values as JSON spells them (and DuckDB), not Python's repr
    return Text(json.dumps(plain, ensure_ascii=False) if isinstance(plain, list | dict | bool) else str(plain))


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str, console: Console) -> None:
    if fmt == "json":
        data = [dict(zip(columns, (_plain(v) for v in row), strict=True)) for row in rows]
        console.out(json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False), highlight=False)
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(v) for v in row])
        console.out(buffer.getvalue().rstrip("\n"), highlight=False)
    else:
        table = Table(show_lines=False, header_style="bold")
        for column in columns:
            table.add_column(Text(column), overflow="fold")
        for row in rows:
            table.add_row(*(_table_cell(v) for v in row))
        console.print(table)
        console.print(f"[dim]{len(rows)} row{'s' if len(rows) != 1 else ''}[/dim]")
