"""Queries of FDAAA 801 compliance (the macros of ``warehouse/analyses.py``) for the CLI and the report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from warehouse.analyses import FDAAA_COLUMNS, STATUSES

# The terminal table's columns (json and csv carry every column of ``fdaaa_as_of``).
TABLE_COLUMNS = ("nct_id", "act_kind", "status", "due_date", "days_late", "results_submitted_date",
                 "lead_sponsor", "brief_title")
SPONSOR_COLUMNS = ("sponsor", "trials", "due", "reported", "reported_on_time", "pct_on_time", "overdue",
                   "days_late")
# Worst first: overdue, then late, then the rest.
_STATUS_ORDER = "CASE status " + " ".join(f"WHEN '{s}' THEN {n}" for n, s in enumerate(STATUSES)) + " END"


@dataclass(frozen=True)
class ComplianceQuery:
    as_of: date
    sponsor: str | None = None  # a literal, case-insensitive part of the lead sponsor's name
    statuses: tuple[str, ...] = ()
    newly_overdue_since: date | None = None  # overdue on as_of, not on this date
    by_sponsor: bool = False
    limit: int | None = None


def compliance_sql(q: ComplianceQuery, columns: tuple[str, ...] = FDAAA_COLUMNS) -> tuple[str, list[Any]]:
    """The trials (or with ``by_sponsor`` the ranking) and the query's parameters."""
    where: list[str] = []
    params: list[Any]
    if q.by_sponsor:
        source, params = "fdaaa_sponsors(?)", [q.as_of]
        select, order = ", ".join(SPONSOR_COLUMNS), "overdue DESC, days_late DESC, sponsor"
        name = "sponsor"
    elif q.newly_overdue_since is not None:
        source, params = "fdaaa_newly_overdue(?, ?)", [q.newly_overdue_since, q.as_of]
        select, order = ", ".join((*columns, "overdue_from")), "overdue_from, nct_id"
        name = "lead_sponsor"
    else:
        source, params = "fdaaa_as_of(?)", [q.as_of]
        select, order = ", ".join(columns), f"{_STATUS_ORDER}, days_late DESC NULLS LAST, nct_id"
        name = "lead_sponsor"
    if q.sponsor:
        where.append(f"contains(lower({name}), lower(?))")
        params.append(q.sponsor)
    if q.statuses:
        where.append(f"status IN ({', '.join('?' for _ in q.statuses)})")
        params += list(q.statuses)
    sql = f"SELECT {select} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order}"
    if q.limit:
        sql += f" LIMIT {int(q.limit)}"
    return sql, params
