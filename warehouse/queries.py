"""SQL for the read commands, planned as (sql, params) so it can be checked without running it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from pipeline.changes import CATEGORIES, EVENTS, SEVERITIES
from pipeline.errors import UsageError
from warehouse.validity import CHANGES_WITH_DAY

CHANGE_COLUMNS = ("registry_updated", "nct_id", "to_version", "event", "field", "old_value", "new_value",
                  "shift_days", "pct_change", "severity", "category")
# Machine-readable output (json, csv): every column of the view, with the stable key first.
ALL_CHANGE_COLUMNS = ("change_id", "nct_id", "from_version", "to_version", "run_id", "detected_at",
                      "registry_updated", "path", "field", "category", "event", "old_value", "new_value",
                      "severity", "shift_days", "pct_change")


@dataclass(frozen=True)
class ChangeFilter:
    since: date | None = None
    until: date | None = None
    nct_ids: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    min_severity: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        _check("category", self.categories, CATEGORIES)
        _check("event", self.events, EVENTS)
        if self.min_severity:
            _check("severity", (self.min_severity,), SEVERITIES)


def _check(kind: str, values: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    for value in values:
        if value not in allowed:
            raise UsageError(f"unknown {kind} {value!r}; one of: {', '.join(allowed)}")


def changes_query(f: ChangeFilter, columns: tuple[str, ...] = CHANGE_COLUMNS) -> tuple[str, list[object]]:
    """The change feed, newest first; dates filter on the day each change happened (``changed_on``:
    its new version's ``valid_from``)."""
    where: list[str] = []
    params: list[object] = []
    day = "changed_on"
    if f.since:
        where.append(f"{day} >= ?")
        params.append(f.since)
    if f.until:
        where.append(f"{day} <= ?")
        params.append(f.until)
    for column, values in (("nct_id", f.nct_ids), ("category", f.categories), ("event", f.events)):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
    if f.min_severity:
        where.append("severity_rank >= ?")
        params.append(SEVERITIES.index(f.min_severity))
    sql = f"SELECT {', '.join(columns)} FROM {CHANGES_WITH_DAY}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {day} DESC, nct_id, to_version, severity_rank DESC, path"
    if f.limit:
        sql += f" LIMIT {int(f.limit)}"
    return sql, params


HISTORY_VERSIONS = """
SELECT version, registry_version, registry_updated, observed_at, source, run_id, is_removed, overall_status,
       enrollment_count, enrollment_type, primary_completion_date_raw, completion_date_raw
FROM study_versions WHERE nct_id = ? ORDER BY version"""

HISTORY_CHANGES = """
SELECT to_version, event, field, old_value, new_value, shift_days, pct_change, severity
FROM changes WHERE nct_id = ? ORDER BY to_version, severity_rank DESC, path"""
