"""``fdaaa_newly_overdue(a, b)``: the day a trial became overdue (``overdue_from``) when its QC history,
not its record's date, moved it: a submission that counted as reporting and was later cancelled."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.fdaaa import counted_submission, qc_days
from pipeline.schema import SubmissionInfo
from tests.fdaaa_support import store, trial
from warehouse.analyses import qc_last_reported_until


def test_a_trial_overdue_again_after_a_qc_cancellation_is_newly_overdue_from_the_cancellation_day(
        tmp_path: Path) -> None:
    """Due from 2021-07-31; a QC submission of 2021-08-10 counted as reporting (reported-late) until it was
    cancelled on 2022-03-15, a day the record's date does not move for. Newly overdue in a window holding
    that day, its overdue_from is the cancellation day, not the due day months before the window."""
    cancelled_later = {"releaseDate": "2021-08-10", "unreleaseDate": "2022-03-15"}
    unknown = {"releaseDate": "2021-08-10", "unreleaseDateUnknown": True}
    # counted until cancelled on 2022-03-10; a resubmission of 2022-03-12 cancelled the same day changed nothing
    chain = [{"releaseDate": "2021-08-10", "unreleaseDate": "2022-03-10"},
             {"releaseDate": "2022-03-12", "unreleaseDateUnknown": True}]
    warehouse = store(tmp_path, [trial("NCT90000001", qc=[cancelled_later]), trial("NCT90000002", qc=[unknown]),
                                 trial("NCT90000003"), trial("NCT90000004", qc=chain)])
    with warehouse.connect() as con:
        rows = con.execute("SELECT nct_id, status, overdue_from FROM fdaaa_newly_overdue(DATE '2022-03-01', "
                           "DATE '2022-04-01') ORDER BY nct_id").fetchall()
        first = con.execute("SELECT nct_id, overdue_from FROM fdaaa_newly_overdue(DATE '2021-07-01', "
                            "DATE '2021-08-20') ORDER BY nct_id").fetchall()
    assert rows == [("NCT90000001", "overdue-cancelled", date(2022, 3, 15)),
                    ("NCT90000004", "overdue-cancelled", date(2022, 3, 10))]
    # on 2021-08-20 the first one's submission counts (reported-late); the second's was cancelled the day it
    # was made (unknown date), which never stopped it being overdue: from its due day, as the third
    assert first == [("NCT90000002", date(2021, 7, 31)), ("NCT90000003", date(2021, 7, 31))]


_DAY = st.integers(0, 40).map(lambda n: date(2021, 1, 1) + timedelta(days=n))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_DAY, st.one_of(st.none(), st.just(True), st.integers(-3, 10))), min_size=1, max_size=8),
       _DAY)
def test_the_day_a_qc_history_last_stopped_counting_is_the_day_after_the_last_day_one_counted(
        entries: list[tuple[date, int | bool | None]], b: date) -> None:
    """Each entry: kept (None), cancelled on an unknown day (True), or that many days after it. Judged by
    the reference scan (``counted_submission``) day by day back from ``b``: the first day of the run of
    days up to ``b`` on which no submission counted, when some day before it one did."""
    infos = [SubmissionInfo(release_date=d.isoformat(), unrelease_date_unknown=gone is True or None,
                            unrelease_date=None if gone is None or gone is True else
                            (d + timedelta(days=gone)).isoformat())
             for d, gone in entries]
    qc = qc_days(infos)
    if counted_submission(qc, b)[0] is not None:
        return  # reporting on b: not overdue
    day, expected = b - timedelta(days=1), None
    while day >= date(2020, 12, 31):
        if counted_submission(qc, day)[0] is not None:
            expected = day + timedelta(days=1)
            break
        day -= timedelta(days=1)
    sql = (f"SELECT {qc_last_reported_until('list_filter(days, lambda x: x <= b)', 'gone', 'gone_on')} "
           "FROM (SELECT ?::DATE[] AS days, ?::DATE[] AS gone, ?::DATE[] AS gone_on, ?::DATE AS b)")
    assert duckdb.execute(sql, [qc.days, qc.cancelled, qc.cancelled_on, b]).fetchone() == (expected,)
