"""What the report shows, read from the warehouse as plain rows (``pipeline.report`` draws them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import duckdb

from pipeline.errors import UsageError
from warehouse.validity import CHANGES_WITH_DAY

Row = dict[str, Any]
TOP_SLIPS = 10
TOP_CHANGES = 60
TOP_OVERDUE = 100


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[Row]:
    result = con.execute(sql, params or [])
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]


def study(con: duckdb.DuckDBPyConnection, nct_id: str) -> Row:
    """A study's versions (oldest first) and every change between them."""
    versions = _rows(con, """
        SELECT version, valid_from, valid_to, is_removed, overall_status, enrollment_count, enrollment_type,
               start_date, start_date_raw, start_date_type, primary_completion_date, primary_completion_date_raw,
               primary_completion_date_type, completion_date, completion_date_raw, completion_date_type,
               brief_title, lead_sponsor
        FROM study_versions WHERE nct_id = ? ORDER BY version""", [nct_id])
    if not versions:
        raise UsageError(f"{nct_id} is not in the warehouse")
    changes = _rows(con, """
        SELECT to_version, event, field, old_value, new_value, severity, shift_days, pct_change, registry_updated
        FROM changes WHERE nct_id = ? ORDER BY to_version, severity_rank DESC, path""", [nct_id])
    named = next((v for v in reversed(versions) if v["brief_title"]), versions[-1])
    registered = _rows(con, "SELECT * FROM registered_vs_current WHERE nct_id = ?", [nct_id])
    return {"nct_id": nct_id, "brief_title": named["brief_title"], "lead_sponsor": named["lead_sponsor"],
            "versions": versions, "changes": changes, "registered": registered[0] if registered else None}


def compliance(con: duckdb.DuckDBPyConnection, as_of: date, since: date) -> Row:
    """FDAAA 801 results reporting on ``as_of``: counts by status, the overdue trials (most days late
    first) and the trials that became overdue after ``since``; each list its first ``TOP_OVERDUE`` rows
    and its full count (``*_total``), so what is shown can say it was cut."""
    columns = "nct_id, brief_title, lead_sponsor, act_kind, status, due_date, days_late"
    overdue = "SELECT * FROM fdaaa_as_of(?) WHERE status IN ('overdue', 'overdue-cancelled')"
    newly = "SELECT * FROM fdaaa_newly_overdue(?, ?)"
    return {
        "as_of": as_of,
        "since": since,
        "counts": _rows(con, "SELECT status, count(*) AS n FROM fdaaa_as_of(?) GROUP BY ALL ORDER BY ALL", [as_of]),
        "overdue": _rows(con, f"SELECT {columns} FROM ({overdue}) ORDER BY days_late DESC, nct_id LIMIT {TOP_OVERDUE}",
                         [as_of]),
        "overdue_total": _count(con, overdue, [as_of]),
        "newly_overdue": _rows(con, f"""SELECT {columns}, overdue_from FROM ({newly})
                                        ORDER BY overdue_from, nct_id LIMIT {TOP_OVERDUE}""", [since, as_of]),
        "newly_overdue_total": _count(con, newly, [since, as_of]),
    }


def _count(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> int:
    row = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Period:
    """The digest's changes: one run's, or those that happened between two dates (``changed_on``)."""

    run_id: str | None = None
    since: date | None = None
    until: date | None = None

    def where(self) -> tuple[str, list[Any]]:
        if self.run_id:
            return "run_id = ?", [self.run_id]
        return (f"change_id IN (SELECT change_id FROM {CHANGES_WITH_DAY} WHERE changed_on BETWEEN ? AND ?)",
                [self.since or date.min, self.until or date.max])


# A changed study's title and lead sponsor: those of its latest stored version that has them (a removed
# study keeps the names it last had).
_NAMES = """LEFT JOIN (SELECT nct_id, arg_max(brief_title, version) AS brief_title,
                              arg_max(lead_sponsor, version) AS lead_sponsor
                       FROM study_versions WHERE NOT is_removed GROUP BY nct_id) AS n ON n.nct_id = c.nct_id"""
_NAMED = "n.brief_title, n.lead_sponsor"


def latest_run(con: duckdb.DuckDBPyConnection, commit_order: Sequence[str] = ()) -> str:
    """The run committed last (``commit_order``: run ids in commit order, the manifest's; a run stamped
    earlier than the one before it by a clock that was behind is still the latest); by ``started_at``
    when the order is unknown. Runs that fetched nothing and changed no study (a rederive, a compaction,
    a hash migration) are not "the latest run": their digest is empty."""
    row = con.execute("SELECT run_id FROM sync_runs WHERE mode NOT IN ('rederive', 'compact', 'migrate') "
                      "ORDER BY coalesce(list_position(?::VARCHAR[], run_id), 0) DESC, started_at DESC LIMIT 1",
                      [list(commit_order)]).fetchone()
    if not row:
        raise UsageError("the warehouse has no sync runs yet")
    return str(row[0])


def digest(con: duckdb.DuckDBPyConnection, period: Period) -> Row:
    where, params = period.where()
    runs = _runs(con, period, where, params)
    if period.run_id and not runs:
        raise UsageError(f"no run {period.run_id} in the warehouse (see `trialsync runs`)")
    totals = _rows(con, f"""
        SELECT count(*) AS changes, count(DISTINCT nct_id) AS studies,
               count(*) FILTER (severity = 'critical') AS critical, count(*) FILTER (severity = 'notable') AS notable
        FROM changes WHERE {where}""", params)[0]
    run_ids = [r["run_id"] for r in runs]
    return {
        "title": _title(period, runs),
        "totals": totals,
        "runs": runs,
        "counts": _rows(con, f"SELECT category, severity, count(*) AS n FROM changes WHERE {where} GROUP BY ALL "
                             "ORDER BY ALL", params),
        "slips": _rows(con, f"""SELECT c.nct_id, field, old_value, new_value, shift_days, severity, {_NAMED}
                                FROM changes AS c {_NAMES}
                                WHERE {where} AND event = 'date_slipped'
                                ORDER BY shift_days DESC, c.nct_id, field LIMIT {TOP_SLIPS}""", params),
        "transitions": _rows(con, f"""SELECT old_value, new_value, count(*) AS n FROM changes
                                      WHERE {where} AND event = 'status_changed'
                                      GROUP BY ALL ORDER BY n DESC, old_value, new_value""", params),
        "notable": _rows(con, f"""SELECT registry_updated, c.nct_id, event, field, old_value, new_value, severity,
                                         shift_days, pct_change, {_NAMED}
                                  FROM changes AS c {_NAMES} WHERE {where} AND severity_rank >= 2
                                  ORDER BY severity_rank DESC, c.nct_id, path LIMIT {TOP_CHANGES}""", params),
        "reconciliation": _rows(con, """SELECT run_id, "check", status, detail FROM reconciliation
                                        WHERE list_contains(?, run_id) AND status <> 'skipped'
                                        ORDER BY checked_at, run_id, "check" """,
                                [run_ids]),
    }


def _runs(con: duckdb.DuckDBPyConnection, period: Period, where: str, params: list[Any]) -> list[Row]:
    columns = "run_id, mode, scope, started_at, studies_seen, versions_written, changes_written, retired"
    if period.run_id:
        return _rows(con, f"SELECT {columns} FROM sync_runs WHERE run_id = ?", [period.run_id])
    return _rows(con, f"""SELECT {columns} FROM sync_runs
        WHERE run_id IN (SELECT run_id FROM changes WHERE {where})
           OR CAST(timezone('UTC', started_at) AS DATE) BETWEEN ? AND ?
        ORDER BY started_at""", [*params, period.since or date.min, period.until or date.max])


def _title(period: Period, runs: list[Row]) -> str:
    if period.run_id:
        run = runs[0]
        return f"run {run['run_id']} ({run['mode']}, scope {run['scope']})"
    return f"registry updates from {period.since or 'the start'} to {period.until or 'today'}"
