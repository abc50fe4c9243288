"""When each version was valid (``warehouse.validity``): versions never overlap, leave no gap, and the
version a day ended on is the one ``studies_as_of`` shows for that day, never a day later: two versions
of one study on one day (same-day runs, or an edit that kept the registry date) no longer push
``valid_from`` into the future. Records are derived from a real one (NCT05766735)."""

from __future__ import annotations

import copy
import secrets
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import mutate
from pipeline.versioning import Head, RunContext, plan_batch
from tests.conftest import Record, nct, real_records
from warehouse import Warehouse
from warehouse.check import check
from warehouse.rows import tombstones_table, versions_table
from warehouse.validity import versions_with_validity

START = date(2026, 4, 9)


def base() -> Record:
    return copy.deepcopy(next(r for r in real_records() if nct(r) == "NCT05766735"))


# One run: (days after the previous run: 0 = the same day, 1 = the next), then what it brings, in order:
# "posted" (new content posted on the run's day), "same" (new content, the head's registry date kept: the
# registry edited the record without moving it), "remove" (a 404: the study is retired).
Runs = list[tuple[int, list[str]]]
runs_strategy = st.lists(st.tuples(st.integers(0, 1), st.lists(st.sampled_from(["posted", "same", "remove"]),
                                                                min_size=1, max_size=3)), min_size=1, max_size=7)


def play(runs: Runs) -> tuple[list[pa.Table], list[tuple[int, date, bool]]]:
    """The rows each run writes (planned by ``plan_batch`` from the heads the runs before left), and the
    versions stored: (version, the day it was observed, is a removal)."""
    record, heads, tables = base(), dict[str, Head](), []
    stored: list[tuple[int, date, bool]] = []
    day, content = START, 0
    for number, (gap, actions) in enumerate(runs):
        day += timedelta(days=gap)
        ctx = RunContext(f"r{number}", datetime.combine(day, time(hour=number), UTC), "api")
        for action in actions:
            head = heads.get(nct(record))
            if action == "remove":
                if head is None or head.is_removed:
                    continue
                tables.append(tombstones_table([(nct(record), head.version + 1, head.content_hash)], ctx))
                heads[nct(record)] = Head(head.version + 1, head.content_hash, True, head.registry_updated)
                stored.append((head.version + 1, day, True))
                continue
            content += 1
            posted = day if action == "posted" or head is None or head.registry_updated is None \
                else head.registry_updated
            plan = plan_batch([mutate.set_enrollment(mutate.posted_on(record, posted), 1000 + content)], heads, ctx)
            assert [v.version for v in plan.versions] == [(head.version if head else 0) + 1]
            heads.update(plan.heads)
            tables.append(versions_table(plan.versions, ctx))
            stored.append((plan.versions[0].version, day, False))
    return tables, stored


def valid_on(con: duckdb.DuckDBPyConnection, day: date) -> list[int]:
    return [r[0] for r in con.execute("SELECT version FROM v WHERE valid_from <= ? AND (valid_to IS NULL OR "
                                      "valid_to > ?)", [day, day]).fetchall()]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs_strategy)
def test_same_day_and_next_day_versions_never_overlap_leave_no_gap_and_end_each_day_on_its_last_version(
        runs: Runs) -> None:
    tables, stored = play(runs)
    if not tables:
        return
    con = duckdb.connect()
    con.register("raw_study_versions", pa.concat_tables(tables))
    con.execute(f"CREATE VIEW v AS SELECT version, observed_at, valid_from, lead(valid_from) OVER w AS valid_to, "
                f"lead(version) OVER w IS NULL AS is_current FROM ({versions_with_validity()}) "
                f"WINDOW w AS (PARTITION BY nct_id ORDER BY version)")
    rows = con.execute("SELECT version, valid_from, valid_to FROM v ORDER BY version").fetchall()
    observed_on = {version: day for version, day, _ in stored}
    for (version, start, end), after in zip(rows, [*rows[1:], None], strict=True):
        assert start <= observed_on[version], (version, start, rows)  # never valid from a day to come
        assert end is None or start <= end, rows  # no overlap
        assert end == (after[1] if after else None), rows  # no gap: each ends where the next starts
    last_day = stored[-1][1]
    for day in [*sorted({d for _, d, _ in stored}), last_day + timedelta(days=1)]:
        ended_on = [version for version, d, _ in stored if d <= day][-1]  # the version the day ended on
        assert valid_on(con, day) == [ended_on], (day, rows)
    assert valid_on(con, START - timedelta(days=1)) == []
    current = con.execute("SELECT version FROM v WHERE is_current").fetchall()
    assert valid_on(con, last_day) == [r[0] for r in current]  # as_of(today) is the current version


def store(root: Path, records: list[Record], observed: datetime) -> None:
    """One committed run of ``records`` (plan -> stage -> commit, as a sync does, without Prefect)."""
    run_id = f"{observed:%Y%m%dT%H%M%S}Z-{secrets.token_hex(3)}"
    ctx = RunContext(run_id, observed, "api")
    with Warehouse(root).writer(run_id) as run:
        plan = plan_batch(records, run.head_index().lookup(nct(r) for r in records), ctx)
        run.append_plan(plan, ctx)
        run.commit()


def one(root: Path, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    with Warehouse(root).connect() as con:
        return con.execute(sql, params).fetchall()


def test_a_study_edited_twice_on_the_day_it_was_posted_shows_its_last_version_as_of_that_day(
        tmp_path: Path) -> None:
    """Posted on D, fetched on D, edited twice that day (same-day runs, the date kept): on D the
    registry ended the day with the third version; the warehouse said the first (valid_from D+1, D+2)."""
    record = mutate.posted_on(base(), date(2026, 4, 20))
    root = tmp_path / "w"
    for hour, status in ((8, None), (12, "COMPLETED"), (18, "TERMINATED")):
        store(root, [mutate.set_status(record, status) if status else record],
              datetime(2026, 4, 20, hour, tzinfo=UTC))
    study = nct(record)
    assert one(root, "SELECT version, valid_from, valid_to FROM study_versions WHERE nct_id = ? ORDER BY version",
               [study]) == [(1, date(2026, 4, 20), date(2026, 4, 20)), (2, date(2026, 4, 20), date(2026, 4, 20)),
                            (3, date(2026, 4, 20), None)]
    assert one(root, "SELECT version, overall_status FROM studies_as_of('2026-04-20') WHERE nct_id = ?", [study]) == \
        one(root, "SELECT version, overall_status FROM studies WHERE nct_id = ?", [study]) == [(3, "TERMINATED")]
    assert one(root, "SELECT count(*) FROM studies_as_of('2026-04-19') WHERE nct_id = ?", [study]) == [(0,)]
    report = check(root, deep=True)  # an empty interval is no overlap: `trialsync check --deep` passes
    assert report.ok, report.summary()
