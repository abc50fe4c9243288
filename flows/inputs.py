"""Numbers from flags and flow parameters, checked alike before any work starts (exit 2, one line).

Upper bounds are those of the config files (``pipeline.config``): no setting means more, and bigger
values overflow timers (``time.sleep(1e10)``), dates or DuckDB's BIGINT downstream.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

from pipeline.dates import latest_plausible
from pipeline.errors import UsageError

SECONDS_MAX = 86_400.0  # a day: no wait, pace or retry budget of one run needs more
HOURS_MAX = 24 * 365  # kept files: as TRIALSYNC_AUTOCOMPACT_KEEP_HOURS
COUNT_MAX = 10**9  # rows, runs: pipeline.config's general bound for whole numbers
PORT_MAX = 65_535


def check_seconds(flag: str, value: float, high: float = SECONDS_MAX) -> float:
    """Finite, >= 0 and <= ``high`` (NaN compares false with everything: a deadline of NaN never comes)."""
    if not math.isfinite(value) or not 0 <= value <= high:
        bound = f" and <= {high:g}" if math.isfinite(value) and value > high else ""
        raise UsageError(f"{flag} must be a number of seconds >= 0{bound}, not {value}")
    return value


def check_hours(flag: str, value: float, high: float = HOURS_MAX) -> float:
    if not math.isfinite(value) or not 0 <= value <= high:
        raise UsageError(f"{flag} must be a number of hours from 0 to {high:g}, not {value}")
    return value


def utc_today() -> date:
    """Today as every command means it: the UTC date, whatever the machine's time zone (a report, a
    compliance judgement and the views agree on one day; registry dates are days without a zone)."""
    return datetime.now(UTC).date()


def not_future(day: date, flag: str) -> date:
    """A date the stored history can speak for: not after tomorrow (registry dates are US Eastern, the
    clock may be a day ahead). After it, `compliance` would count days late that have not passed."""
    if day > latest_plausible(utc_today()):
        raise UsageError(f"{flag} {day} is in the future")
    return day
