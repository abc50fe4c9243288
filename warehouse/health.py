"""What reconciliation needs from the warehouse, and its rows (the ``reconciliation`` table)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
import pyarrow as pa

from pipeline.reconcile import Check
from warehouse.run_writer import SYNCED, RunWriter


@dataclass(frozen=True)
class ScopeState:
    """The scope before this run (committed) and after it (staged), as plain data."""

    members_before: frozenset[str]
    seen_dates: dict[str, date | None]
    status_counts: dict[str, int]
    previous_status_counts: dict[str, int] | None
    former_members: frozenset[str] = frozenset()  # seen by earlier runs of the scope, exited since


def scope_state(run: RunWriter, scope: str, seen: Iterable[str], exited: Iterable[str] = ()) -> ScopeState:
    """Call after the run staged its last version (``study_versions`` and ``run_studies`` are sealed here).
    ``exited``: members this run found gone from the scope (not counted in its status counts)."""
    members = frozenset(run.scope_members(scope))
    previous = previous_status_counts(run, scope)
    with run.before() as con:
        ever = {r[0] for r in con.execute(
            f"""SELECT DISTINCT r.nct_id FROM raw_run_studies r JOIN raw_sync_runs s USING (run_id)
                WHERE s.scope = ? AND s.{SYNCED.replace(" AND ", " AND s.")}""", [scope]).fetchall()}
    run.seal("study_versions")
    run.seal("run_studies")
    seen_ids = set(seen)
    with run.staged() as con:
        dates = dict(con.execute(
            """SELECT r.nct_id, v.registry_updated FROM raw_run_studies r
               JOIN raw_study_versions v USING (nct_id, version) WHERE r.run_id = ?""", [run.run_id]).fetchall())
        in_scope = sorted((members - set(exited)) | seen_ids)
        con.register("scope_ids", pa.table({"nct_id": pa.array(in_scope, pa.string())}))
        counts = dict(con.execute(
            """SELECT coalesce(overall_status, 'UNKNOWN_STATUS'), count(*) FROM study_versions
               JOIN scope_ids USING (nct_id) WHERE is_current AND NOT is_removed GROUP BY 1""").fetchall())
    return ScopeState(members, {n: dates.get(n) for n in seen_ids}, counts, previous, frozenset(ever - members))


def previous_status_counts(run: RunWriter, scope: str) -> dict[str, int] | None:
    """Studies per status after the scope's last reconciled run (None before its first)."""
    with run.before() as con:
        row = con.execute(
            """SELECT data FROM raw_reconciliation WHERE scope = ? AND "check" = 'status_counts'
               ORDER BY checked_at DESC LIMIT 1""", [scope]).fetchone()
    if not row or not row[0]:
        return None
    current = orjson.loads(row[0]).get("current")
    return {str(k): int(v) for k, v in current.items()} if isinstance(current, dict) else None


def reconciliation_rows(run_id: str, scope: str, mode: str, checked_at: datetime,
                        checks: Iterable[Check]) -> list[dict[str, Any]]:
    return [{"run_id": run_id, "scope": scope, "mode": mode, "checked_at": checked_at, "check": c.check,
             "status": c.status, "expected": c.expected, "observed": c.observed, "flagged": c.flagged,
             "detail": c.detail, "ids": list(c.ids), "data": orjson.dumps(c.data).decode()} for c in checks]
