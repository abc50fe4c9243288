"""Queries of FDAAA 801 compliance (the macros of ``warehouse/analyses.py``) for the CLI and the report,
and the typing of ``fdaaa_inputs`` for versions stored before that table existed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson
import pyarrow as pa

from pipeline.errors import RecordInvalid
from pipeline.fdaaa import fdaaa_inputs
from pipeline.parse import parse_record
from warehouse.analyses import FDAAA_COLUMNS, STATUSES
from warehouse.store import RunWriter
from warehouse.tables import CHILD_TABLES

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
        extra = ("overdue_from", "event_id") if columns == FDAAA_COLUMNS else ("overdue_from",)
        select, order = ", ".join((*columns, *extra)), "overdue_from, nct_id"
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


MISSING_INPUTS_SQL = """SELECT v.nct_id, v.version, v.raw FROM raw_study_versions AS v
WHERE NOT v.is_removed AND v.raw IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM raw_fdaaa_inputs AS f WHERE f.nct_id = v.nct_id AND f.version = v.version)
ORDER BY v.nct_id, v.version"""


def fill_fdaaa_inputs(run: RunWriter, *, batch: int = 2000) -> int:
    """Type the FDAAA inputs of stored versions that have none (stored by a release before
    ``fdaaa_inputs`` existed) from their raw JSON, into ``run``. Returns how many versions it typed."""
    schema = CHILD_TABLES["fdaaa_inputs"]
    typed = 0
    with run.before() as con:
        result = con.execute(MISSING_INPUTS_SQL)
        while rows := result.fetchmany(batch):
            columns: dict[str, list[Any]] = {name: [] for name in schema.names}
            for nct_id, version, raw in rows:
                try:
                    values = fdaaa_inputs(parse_record(orjson.loads(raw)).study)
                except RecordInvalid:  # stored under an older schema and no longer valid: left as it is
                    continue
                columns["nct_id"].append(nct_id)
                columns["version"].append(version)
                for name, value in values.items():
                    columns[name] += value
            run.append("fdaaa_inputs", pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema},
                                                schema=schema))
            typed += len(columns["nct_id"])
    return typed
