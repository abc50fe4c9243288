"""Registry dates: PartialDate (``yyyy``, ``yyyy-MM``, ``yyyy-MM-dd``) and full dates."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple

from pipeline.errors import RecordInvalid

# "Today" in SQL: the UTC date (DuckDB's current_date is the connection's local date).
UTC_TODAY_SQL = "CAST(timezone('UTC', now()) AS DATE)"


def utc_day(moment: datetime) -> date:
    """The UTC day of ``moment``: DuckDB hands TIMESTAMPTZ values back in the machine's zone, whose
    date can be a day off UTC's."""
    return moment.astimezone(UTC).date() if moment.tzinfo is not None else moment.date()


def latest_plausible(today: date) -> date:
    """The latest registry date a record can carry on ``today`` (UTC): the next day, since registry
    dates are US Eastern days. Later is a damaged record's (it must not move watermarks or heads)."""
    return today + timedelta(days=1)


_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?$")


class PartialDate(NamedTuple):
    """A registry date with its precision: ``2025-05`` is stored as 2025-05-01, precision ``month``."""

    value: date
    raw: str
    precision: str  # "year" | "month" | "day"

    def text(self) -> str:
        """The registry's text for this date, rebuilt from value and precision (equals ``raw``)."""
        return self.value.isoformat()[: {"year": 4, "month": 7, "day": 10}[self.precision]]


def parse_partial_date(raw: str, *, field: str = "date") -> PartialDate:
    """Parse a PartialDate; the first day of the period stands for a year or a month."""
    parsed = _parse(raw)
    if isinstance(parsed, str):
        raise RecordInvalid(f"{field}: {raw!r} {parsed}")
    return parsed


@lru_cache(maxsize=1 << 16)
def _parse(raw: str) -> PartialDate | str:
    """The date, or what is wrong with it. Cached: a version holds ~15 dates, and the same days recur
    across studies (a PartialDate is immutable, so sharing one is safe)."""
    match = _PARTIAL.match(raw)
    if not match or (match.group(3) and not match.group(2)):
        return "is not a yyyy, yyyy-MM or yyyy-MM-dd date"
    year, month, day = match.groups()
    try:
        value = date(int(year), int(month or 1), int(day or 1))
    except ValueError as exc:
        return f"is not a calendar date ({exc})"
    precision = "day" if day else "month" if month else "year"
    return PartialDate(value, raw, precision)


def parse_full_date(raw: str, *, field: str = "date") -> date:
    """Parse a DateStruct date (always a full day in the API)."""
    parsed = parse_partial_date(raw, field=field)
    if parsed.precision != "day":
        raise RecordInvalid(f"{field}: {raw!r} should be a full yyyy-MM-dd date")
    return parsed.value
