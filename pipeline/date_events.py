"""What a change of a plan date (start, primary completion, completion) is: a move or a change of precision.

A registry date is a period: ``2028`` is the year, ``2028-05`` the month, ``2028-05-31`` the day. Two
calendar periods are either nested or disjoint, which decides the event:

- nested, the new one finer (``2028-05`` -> ``2028-05-31``): ``date_precision_refined``;
- nested, the new one coarser (``2028-05-31`` -> ``2028-05``): ``date_precision_coarsened``, the inverse
  of a refinement; the date did not move, so it carries no shift;
- disjoint: ``date_slipped`` (later) or ``date_advanced`` (earlier) with ``shift_days``. A partial date
  stands for the first day of its period, so a move compares first days (``2028-05`` -> ``2028-07-15``
  is 75 days), except when the new date is coarser: then the shift is from the old date to the nearest
  day of the new period, the least the date moved (``2028-12-15`` -> ``2029`` slipped 17 days,
  ``2028-05-10`` -> ``2028-04`` advanced 10 days, not 39).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, NamedTuple

from pipeline.dates import PartialDate, parse_partial_date
from pipeline.errors import RecordInvalid

_PRECISION = {"year": 0, "month": 1, "day": 2}


class DateChange(NamedTuple):
    event: str  # date_slipped | date_advanced | date_precision_refined | date_precision_coarsened | field_changed
    shift_days: int | None = None


def partial(raw: Any) -> PartialDate | None:
    """A registry date, or None for anything else (absent, not a date)."""
    if not isinstance(raw, str):
        return None
    try:
        return parse_partial_date(raw)
    except RecordInvalid:
        return None


def period_end(d: PartialDate) -> date:
    """The last day of the period a partial date names."""
    if d.precision == "day":
        return d.value
    if d.precision == "month":
        following = d.value.replace(year=d.value.year + d.value.month // 12, month=d.value.month % 12 + 1)
        return following - timedelta(days=1)
    return d.value.replace(month=12, day=31)


def date_change(old: PartialDate, new: PartialDate) -> DateChange:
    """The event of a plan date going from ``old`` to ``new`` (module docstring)."""
    old_end, new_end = period_end(old), period_end(new)
    finer, coarser = (_PRECISION[new.precision] > _PRECISION[old.precision],
                      _PRECISION[new.precision] < _PRECISION[old.precision])
    if finer and old.value <= new.value and new_end <= old_end:
        return DateChange("date_precision_refined")
    if coarser and new.value <= old.value and old_end <= new_end:
        return DateChange("date_precision_coarsened")
    if coarser:
        nearest = new.value if new.value > old.value else new_end
        shift = (nearest - old.value).days
    else:
        shift = (new.value - old.value).days
    if shift == 0:
        return DateChange("field_changed")
    return DateChange("date_slipped" if shift > 0 else "date_advanced", shift)
