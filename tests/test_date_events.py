"""Issue 19 item 6: a date that becomes less precise is a coarsening, not a move (unless it leaves the period)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.changes import Change, Rules, VersionPair, derive_changes
from pipeline.date_events import partial, period_end
from tests.conftest import nct, real_records

RECORDS = real_records()
RECORD = next(r for r in RECORDS if r["protocolSection"]["statusModule"].get("completionDateStruct"))


def text(day: date, precision: str) -> str:
    return day.isoformat()[: {"year": 4, "month": 7, "day": 10}[precision]]


partial_dates = st.builds(text, st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31)),
                          st.sampled_from(["year", "month", "day"]))


def date_rows(old: str, new: str) -> list[Change]:
    """The changes of the completion date of a real record going from ``old`` to ``new``."""
    before, after = (mutate.set_date(RECORD, "completionDate", d) for d in (old, new))
    return [c for c in derive_changes(VersionPair(nct(RECORD), 1, 2, before, after, "run", None, None), Rules())
            if c.category == "dates"]


def one(old: str, new: str) -> tuple[Any, ...]:
    [row] = date_rows(old, new)
    return row.event, row.old_value, row.new_value, row.shift_days, row.severity


def test_the_issues_coarsenings_are_minor_and_not_moves() -> None:
    assert one("2028-05-31", "2028-05") == ("date_precision_coarsened", "2028-05-31", "2028-05", None, "minor")
    assert one("2028-12-15", "2028") == ("date_precision_coarsened", "2028-12-15", "2028", None, "minor")
    assert one("2028-05", "2028-05-31")[0] == "date_precision_refined"  # its inverse, as before


def test_a_coarsening_that_leaves_the_old_date_is_a_move_by_the_least_distance() -> None:
    assert one("2028-12-15", "2029")[:4] == ("date_slipped", "2028-12-15", "2029", 17)
    assert one("2028-05-10", "2028-04")[:4] == ("date_advanced", "2028-05-10", "2028-04", -10)
    assert one("2028-05-31", "2028-07")[:4] == ("date_slipped", "2028-05-31", "2028-07", 31)
    assert one("2028-05", "2028-07-15")[3] == 75  # other moves compare first days, as before


@settings(max_examples=400, deadline=None)
@given(partial_dates, partial_dates)
def test_a_move_is_reported_exactly_when_the_periods_are_disjoint(old: str, new: str) -> None:
    rows = date_rows(old, new)
    if old == new:
        assert rows == []
        return
    [row] = rows
    a, b = partial(old), partial(new)
    assert a is not None and b is not None
    disjoint = period_end(a) < b.value or period_end(b) < a.value
    if not disjoint:
        finer = len(new) > len(old)
        assert (row.event, row.shift_days) == (
            "date_precision_refined" if finer else "date_precision_coarsened", None)
        assert row.severity == "minor"
        return
    later = b.value > period_end(a)
    assert row.event == ("date_slipped" if later else "date_advanced")
    assert row.shift_days is not None and (row.shift_days > 0) == later
    if len(new) < len(old):  # coarser: the least distance from the old date to the new period
        nearest = b.value if later else period_end(b)
        assert row.shift_days == (nearest - a.value).days
        assert abs(row.shift_days) <= abs((b.value - a.value).days)
    else:
        assert row.shift_days == (b.value - a.value).days


@settings(max_examples=200, deadline=None)
@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31)), st.sampled_from(["year", "month"]))
def test_the_inverse_of_a_refinement_is_a_coarsening(day: date, coarse: str) -> None:
    fine = text(day, "day")
    assert one(text(day, coarse), fine)[0] == "date_precision_refined"
    assert one(fine, text(day, coarse))[0] == "date_precision_coarsened"


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2040, 12, 31)))
def test_a_period_ends_on_its_last_day(day: date) -> None:
    month_end = period_end(partial(text(day, "month")))  # type: ignore[arg-type]
    assert (month_end.month, (month_end + timedelta(days=1)).day) == (day.month, 1)
    assert period_end(partial(text(day, "year"))) == date(day.year, 12, 31)  # type: ignore[arg-type]
