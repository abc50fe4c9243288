"""``trialsync history NCT``: a study's versions and what changed between them, for a terminal."""

from __future__ import annotations

import json
from datetime import UTC
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from flows.readonly import reading
from pipeline.abbreviate import abbreviate_pair
from pipeline.errors import UsageError
from warehouse.queries import HISTORY_CHANGES, HISTORY_VERSIONS

_STYLE = {"critical": "bold red", "notable": "yellow", "minor": "cyan", "info": "dim"}


def load_history(warehouse_dir: Path, nct_id: str) -> list[dict[str, Any]]:
    with reading(warehouse_dir) as con:
        versions = con.execute(HISTORY_VERSIONS, [nct_id])
        columns = [d[0] for d in versions.description]
        rows = [dict(zip(columns, row, strict=True)) for row in versions.fetchall()]
        changes = con.execute(HISTORY_CHANGES, [nct_id])
        change_columns = [d[0] for d in changes.description]
        by_version: dict[int, list[dict[str, Any]]] = {}
        for values in changes.fetchall():
            change = dict(zip(change_columns, values, strict=True))
            by_version.setdefault(change.pop("to_version"), []).append(change)
    if not rows:
        raise UsageError(f"{nct_id} is not in the warehouse")
    for row in rows:
        # DuckDB gives a TIMESTAMPTZ in the machine's zone; the history speaks UTC
        row["observed_at"] = row["observed_at"].astimezone(UTC)
        row["changes"] = by_version.get(row["version"], [])
    return rows


def describe(change: dict[str, Any]) -> str:
    old, new = change["old_value"], change["new_value"]
    text = f"{change['event']}: {change['field']}"
    if old is not None or new is not None:
        shown_old, shown_new = abbreviate_pair(old, new, 80)
        text += f": {shown_old} → {shown_new}"
    if change["shift_days"] is not None:
        text += f" ({change['shift_days']:+d} days)"
    if change["pct_change"] is not None:
        text += f" ({change['pct_change']:+.1f}%)"
    return text


def print_history(warehouse_dir: Path, nct_id: str, fmt: str, console: Console) -> None:
    versions = load_history(warehouse_dir, nct_id)
    if fmt == "json":
        console.out(json.dumps(versions, default=str, ensure_ascii=False, indent=2), highlight=False)
        return
    console.print(f"[bold]{nct_id}[/]: {len(versions)} version{'s' if len(versions) != 1 else ''}  "
                  f"https://clinicaltrials.gov/study/{nct_id}?tab=history", highlight=False)
    for v in versions:
        updated = v["registry_updated"] or "—"
        state = "removed: the registry no longer has this study (404)" if v["is_removed"] else (
            f"{v['overall_status']}, enrollment {v['enrollment_count']} {v['enrollment_type'] or ''}".rstrip()
            + f", completion {v['completion_date_raw']}")
        registry = f"registry v{v['registry_version']} {updated}" if v["registry_version"] is not None else (
            f"registry {updated}")
        console.print(f"\n[bold]v{v['version']}[/]  {registry}  (stored {v['observed_at']:%Y-%m-%d %H:%M}"
                      f" UTC, {v['source']}, run {v['run_id']})\n  {escape(state)}", highlight=False)
        for change in v["changes"]:
            if change["event"] == "field_changed" and change["severity"] == "info":
                continue
            console.print(f"  [{_STYLE[change['severity']]}]{change['severity']:>8}[/]  {escape(describe(change))}",
                          highlight=False)
        hidden = sum(1 for c in v["changes"] if c["event"] == "field_changed" and c["severity"] == "info")
        if hidden:
            console.print(f"  [dim]{'':>8}  + {hidden} other field change{'s' if hidden != 1 else ''} "
                          f"(trialsync changes --nct {nct_id} --event field_changed)[/]", highlight=False)
