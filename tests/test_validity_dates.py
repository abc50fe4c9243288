"""Validity against registry dates that are not to be trusted: a record dated after the day it was observed
(a damaged ``lastUpdatePostDate`` such as 2099-01-01, or a host clock behind the registry's), several
versions observed on one day, and a clock that goes back between runs. Versions never overlap, and no record
moves its study's validity past what was observed: ``studies_as_of`` of the day a version was stored (on a
clock that only moves forward, a day or more between runs) shows that version, whatever an earlier version's
registry date said.
"""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flows.sync
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from pipeline.versioning import Head, RunContext, plan_batch
from tests.conftest import STUDIES_DIR, fast_sync, load, nct, real_records
from tests.test_wrong_clock import _clock
from warehouse import Warehouse
from warehouse.rows import versions_table
from warehouse.validity import CHANGES_WITH_DAY, versions_with_validity

START = date(2026, 3, 1)
DAMAGED = date(2099, 1, 1)


def _base() -> dict[str, Any]:
    return next(r for r in real_records() if nct(r) == "NCT05766735")


@st.composite
def runs(draw: st.DrawFn) -> list[tuple[datetime, list[tuple[date, int]]]]:
    """Runs of one study: each observed at a moment (the clock may stay on a day, jump ahead or go back) and
    delivering records (registry date, content number) dated before, on or after that day, or 2099."""
    moment = datetime(2026, 3, 1, 6, tzinfo=UTC)
    out = []
    content = 0
    for _ in range(draw(st.integers(1, 6))):
        moment += timedelta(hours=draw(st.sampled_from([0, 1, 20, 24, 49, 24 * 9, -5, -24, -24 * 30])))
        day = moment.date()
        batch = []
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["before", "same", "after", "damaged", "repeat"]))
            if kind == "repeat" and batch:
                batch.append(batch[-1])
                continue
            registry = {"before": day - timedelta(days=draw(st.integers(1, 40))), "same": day,
                        "after": day + timedelta(days=draw(st.integers(1, 400))), "damaged": DAMAGED,
                        "repeat": day}[kind]
            content += 1
            batch.append((registry, content))
        out.append((moment, batch))
    return out


def _dated(runs_: list[tuple[datetime, list[tuple[date, int]]]]) -> list[tuple[date, date, date, date | None]]:
    """(observed day, registry date, valid_from, valid_to) of every version the runs store, in order."""
    base = _base()
    heads: dict[str, Head] = {}
    tables = []
    for number, (moment, batch) in enumerate(runs_):
        ctx = RunContext(f"r{number}", moment, "api")
        plan = plan_batch([mutate.set_enrollment(mutate.posted_on(base, day), 1000 + content)
                           for day, content in batch], heads, ctx)
        heads.update(plan.heads)
        if plan.versions:
            tables.append(versions_table(plan.versions, ctx))
    if not tables:
        return []
    con = duckdb.connect()
    con.register("raw_study_versions", pa.concat_tables(tables))
    rows = con.execute(f"""SELECT CAST(timezone('UTC', observed_at) AS DATE), registry_updated, valid_from,
                                  lead(valid_from) OVER (ORDER BY version)
                           FROM ({versions_with_validity()}) ORDER BY version""").fetchall()
    return [tuple(r) for r in rows]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_no_registry_date_moves_validity_past_what_was_observed(
        runs_: list[tuple[datetime, list[tuple[date, int]]]]) -> None:
    rows = _dated(runs_)
    # Versions never overlap: every interval is a whole day or more.
    assert all(to is None or start < to for _, _, start, to in rows), rows
    # A version starts no later than the day it was observed, or a later version was (a clock that went
    # back: it was stored before that one), moved on by one day for each version stored since (whole days:
    # two versions seen on one day cannot both start on it); a record dated after the day it was observed
    # no later than its registry date when a later observation confirms that date (``_observed_days``).
    # Before the fix a 2099 record dated itself and every later version 2099, and a version stored while
    # the clock was a month ahead a month ahead.
    observed = _observed_days(rows)
    for n, (_, _, start, _) in enumerate(rows):
        bound = max(observed[k] + timedelta(days=n - k) for k in range(n + 1))
        assert start <= bound, (n, rows)
    # A registry date no later than the day observed, after the previous version's start, is the day it starts.
    for n, (_, registry, start, _) in enumerate(rows):
        if registry <= observed[n] and (n == 0 or registry > rows[n - 1][2]):
            assert start == registry, (n, rows)


def _observed_days(rows: list[tuple[date, date, date, date | None]]) -> list[date]:
    """The day each version was observed as far as the later ones tell: its own, or the earliest of a later
    version whose registry date does not contradict its observation (no later than the next day), if
    earlier; a registry date after the version's own observation day (a clock behind, or a damaged date)
    when such a later observation is no earlier than it (it confirms the date)."""
    out = []
    for n, (seen, registry, _, _) in enumerate(rows):
        later = [s for s, r, _, _ in rows[n + 1:] if r is None or r <= s + timedelta(days=1)]
        bound = min(later, default=None)
        if registry is not None and registry > seen + timedelta(days=1) and bound is not None and registry <= bound:
            out.append(registry)
        else:
            out.append(seen if bound is None else min(seen, bound))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs(), st.integers(3, 400), st.integers(1, 60))
def test_a_version_stored_while_the_clock_was_behind_moves_no_earlier_version(
        runs_: list[tuple[datetime, list[tuple[date, int]]]], behind: int, edited: int) -> None:
    """A run on a host whose clock is ``behind`` days behind stores a record the registry dated ``edited``
    days before the real day, after its (wrong) observation day: the earlier versions, observed by a right
    clock (or not), keep their validity, so ``studies_as_of`` of a past day answers as before. It dated
    them back to its own observation day (a month's history of the study squeezed into days before it)."""
    rows = _dated(runs_)
    dated = [datetime(d.year, d.month, d.day, 6, tzinfo=UTC) for _, batch in runs_ for d, _ in batch if d < DAMAGED]
    real = max([moment for moment, _ in runs_] + dated) + timedelta(days=1)
    registry = (real - timedelta(days=min(edited, behind - 2))).date()  # after the day after it was observed
    after = _dated([*runs_, (real - timedelta(days=behind), [(registry, 99)])])
    assert [start for _, _, start, _ in after[:len(rows)]] == [start for _, _, start, _ in rows], (rows, after)
    assert len(after) == len(rows) + 1


def test_a_record_the_clock_behind_stored_is_valid_from_its_registry_date_once_a_later_run_confirms_it() -> None:
    """Monthly runs, one of them on a clock 60 days behind: its version is valid from the registry's date
    once the next run (clock right again) shows the registry was serving it by then; before that, no
    earlier version moved."""
    start = datetime(2026, 6, 1, 6, tzinfo=UTC)
    runs_ = [(start + timedelta(days=30 * k), [((start + timedelta(days=30 * k - 1)).date(), k)]) for k in range(4)]
    behind = (start + timedelta(days=120 - 60), [((start + timedelta(days=119)).date(), 9)])
    following = (start + timedelta(days=150), [((start + timedelta(days=149)).date(), 10)])
    rightly = [r[2] for r in _dated(runs_)]
    assert [r[2] for r in _dated([*runs_, behind])][:4] == rightly
    assert [r[2] for r in _dated([*runs_, behind, following])] == [
        *rightly, date(2026, 9, 28), date(2026, 10, 28)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["before", "same", "after", "damaged"]), min_size=1, max_size=6))
def test_on_a_clock_that_moves_forward_a_stored_version_is_the_one_valid_on_its_day(kinds: list[str]) -> None:
    """One run a day (or more apart): ``studies_as_of`` of a run's day shows the version it stored, even
    after a record dated 2099 or ahead of its run's day."""
    runs_ = []
    for n, kind in enumerate(kinds):
        moment = datetime(2026, 3, 1, 6, tzinfo=UTC) + timedelta(days=2 * n)
        registry = {"before": moment.date() - timedelta(days=1), "same": moment.date(),
                    "after": moment.date() + timedelta(days=30), "damaged": DAMAGED}[kind]
        runs_.append((moment, [(registry, n)]))
    for seen, _, start, to in _dated(runs_):
        assert start <= seen and (to is None or to > seen), _dated(runs_)


def test_a_record_dated_2099_hides_no_later_version_from_studies_as_of_today(tmp_path: Path) -> None:
    """Real syncs over loopback: a record dated 2099 and then the registry's real next edit."""
    records = [copy.deepcopy(r) for r in real_records()[:3]]
    study = nct(records[0])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, full=True)
        registry.put(mutate.set_status(mutate.posted_on(registry.record(study), DAMAGED), "SUSPENDED"))
        fast_sync(registry, root, full=True)
        today = datetime.now(UTC).date()
        registry.put(mutate.set_status(mutate.posted_on(registry.record(study), today), "TERMINATED"))
        fast_sync(registry, root, full=True)
    with Warehouse(root).connect() as con:
        starts = con.execute("SELECT version, valid_from FROM study_versions WHERE nct_id = ? ORDER BY version",
                             [study]).fetchall()
        # today's second version starts tomorrow (whole days); the one after it is no longer kept in 2099
        shown = con.execute("SELECT version, overall_status FROM studies_as_of(?) WHERE nct_id = ?",
                            [today + timedelta(days=1), study]).fetchall()
    assert [v for v, _ in starts] == [1, 2, 3]
    assert all(start <= today + timedelta(days=2) for _, start in starts), starts
    assert shown == [(3, "TERMINATED")]


@pytest.mark.usefixtures("prefect_api")
def test_a_version_stored_while_the_clock_was_ahead_is_not_dated_in_the_future(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real syncs over loopback: a QC submission (the registry keeps the record's date) stored while the
    host's clock was 60 days ahead, then the clock right again and the registry's next edit. The version
    was observed no later than the next one: both are valid from today on, not from February."""
    record = load(STUDIES_DIR / "NCT06401733.json")  # three QC submissions
    before = copy.deepcopy(record)
    before["derivedSection"]["miscInfoModule"]["submissionTracking"]["submissionInfos"].pop()
    study = nct(record)
    root = tmp_path / "wh"
    with FakeRegistry([before, *copy.deepcopy(real_records()[:2])]).start() as registry:
        fast_sync(registry, root, full=True)
        registry.put(record)
        monkeypatch.setattr(flows.sync, "datetime", _clock(timedelta(days=60)))
        fast_sync(registry, root, full=True)
        monkeypatch.undo()
        today = datetime.now(UTC).date()
        registry.put(mutate.set_status(mutate.posted_on(registry.record(study), today), "TERMINATED"))
        fast_sync(registry, root, full=True)
    with Warehouse(root).connect() as con:
        starts = con.execute("SELECT version, valid_from FROM study_versions WHERE nct_id = ? ORDER BY version",
                             [study]).fetchall()
        shown = con.execute("SELECT version FROM studies_as_of(?) WHERE nct_id = ?", [today, study]).fetchall()
        filed = con.execute(f"SELECT DISTINCT changed_on FROM {CHANGES_WITH_DAY} WHERE nct_id = ? ORDER BY 1",
                            [study]).fetchall()
    assert starts[1:] == [(2, today), (3, today + timedelta(days=1))]
    assert shown == [(2,)]
    assert filed == [(today,), (today + timedelta(days=1),)]


def test_after_a_record_dated_2099_a_lagging_replicas_older_record_is_still_stale(tmp_path: Path) -> None:
    """The study's head kept 2099 as its registry date, which no run finds plausible: no record of the study
    was stale any more, and a lagging replica serving its first record again made a fourth version (a
    reversal of the registry's real edit, with its changes)."""
    records = [copy.deepcopy(r) for r in real_records()[:3]]
    study, first = nct(records[0]), copy.deepcopy(records[0])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, full=True)
        registry.put(mutate.set_status(mutate.posted_on(registry.record(study), DAMAGED), "SUSPENDED"))
        fast_sync(registry, root, full=True)
        today = datetime.now(UTC).date()
        registry.put(mutate.set_status(mutate.posted_on(registry.record(study), today), "TERMINATED"))
        fast_sync(registry, root, full=True)
        registry.put(first)
        lagging = fast_sync(registry, root, full=True)
    with Warehouse(root).connect() as con:
        versions = con.execute("SELECT version, registry_updated FROM study_versions WHERE nct_id = ? ORDER BY 1",
                               [study]).fetchall()
    assert lagging["stale"] == 1
    assert [(v, d) for v, d in versions[1:]] == [(2, DAMAGED), (3, today)]
