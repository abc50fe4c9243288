"""Issue 4 in the warehouse: the changes view, rederive, studies_as_of, removals, and the CLI."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from flows.derive import rederive_changes
from flows.history import print_history
from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import copy_warehouse, fast_sync, nct, snapshot_pairs
from tests.test_cli import run_cli
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")


def rows(warehouse_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql, params or []).fetchall()


@pytest.fixture(scope="module")
def three_versions_built(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """NCT05766735 stored at its two real versions plus a derived third, with the 7 derived-only pairs."""
    pairs = snapshot_pairs()
    warehouse_dir = tmp_path_factory.mktemp("three") / "w"
    with FakeRegistry([older for older, _ in pairs.values()]).start() as registry:
        fast_sync(registry, warehouse_dir)
        registry.put(*(newer for _, newer in pairs.values()))
        fast_sync(registry, warehouse_dir, full=True)
        third = mutate.posted_on(mutate.set_status(pairs["NCT05766735"][1], "TERMINATED", "Funding ended"),
                                 date(2026, 6, 1))
        registry.put(third)
        fast_sync(registry, warehouse_dir)
    return warehouse_dir, third


@pytest.fixture
def three_versions(three_versions_built: tuple[Path, dict[str, Any]], tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the three-version warehouse, for one test to change."""
    return copy_warehouse(three_versions_built[0], tmp_path / "w"), three_versions_built[1]


def test_the_changes_view_holds_the_real_change_and_a_derived_one(three_versions: tuple[Path, Any]) -> None:
    warehouse_dir, _ = three_versions
    typed = rows(warehouse_dir, """SELECT nct_id, from_version, to_version, event, old_value, new_value, shift_days,
        severity FROM changes WHERE event <> 'field_changed' ORDER BY to_version, event, path""")
    assert typed == [
        ("NCT05766735", 1, 2, "date_slipped", "2027-04-15", "2027-05-31", 46, "notable"),
        ("NCT05766735", 1, 2, "date_slipped", "2027-04-15", "2027-05-31", 46, "notable"),
        ("NCT05766735", 2, 3, "status_changed", "RECRUITING", "TERMINATED", None, "critical"),
        ("NCT05766735", 2, 3, "why_stopped_set", None, "Funding ended", None, "minor"),
    ]
    assert rows(warehouse_dir, "SELECT count(*) FROM changes WHERE nct_id <> 'NCT05766735'") == [(0,)]
    assert rows(warehouse_dir, "SELECT count(*) FROM changes_between('2026-04-01', '2026-04-30')") == [(4,)]


def test_studies_as_of_answers_before_between_and_after_three_versions(three_versions: tuple[Path, Any]) -> None:
    warehouse_dir, _ = three_versions

    def as_of(day: str) -> list[tuple[Any, ...]]:
        return rows(warehouse_dir, "SELECT version, overall_status, completion_date_raw FROM studies_as_of(?) "
                                   "WHERE nct_id = 'NCT05766735'", [day])

    assert as_of("2025-05-06") == []
    assert as_of("2025-05-07") == [(1, "RECRUITING", "2027-04-15")]
    assert as_of("2026-04-08") == [(1, "RECRUITING", "2027-04-15")]
    assert as_of("2026-04-09") == [(2, "RECRUITING", "2027-05-31")]
    assert as_of("2026-05-31") == [(2, "RECRUITING", "2027-05-31")]
    assert as_of("2026-06-01") == [(3, "TERMINATED", "2027-05-31")]
    assert as_of("2030-01-01") == [(3, "TERMINATED", "2027-05-31")]


def test_rederive_with_one_threshold_changed_changes_only_those_severities(
        three_versions: tuple[Path, Any], tmp_path: Path) -> None:
    warehouse_dir, _ = three_versions
    query = "SELECT change_id, event, old_value, new_value, shift_days, severity, run_id FROM changes ORDER BY 1"
    before = rows(warehouse_dir, query)
    rederive_changes(warehouse=str(warehouse_dir))
    assert rows(warehouse_dir, query) == before  # same rules, same rows
    rules = tmp_path / "rules.yaml"
    rules.write_text("severity:\n  date_shift_days_notable: 60\n")
    rederived = rederive_changes(warehouse=str(warehouse_dir), rules_file=str(rules))
    after = rows(warehouse_dir, query)
    changed = [(b[1], b[5], a[5]) for b, a in zip(before, after, strict=True) if b != a]
    assert changed == [("date_slipped", "notable", "minor"), ("date_slipped", "notable", "minor")]
    assert [b[:5] for b in before] == [a[:5] for a in after]
    assert rows(warehouse_dir, "SELECT mode FROM sync_runs WHERE run_id = ?", [rederived["run_id"]]) == [("rederive",)]


def test_a_full_run_retires_vanished_studies_and_an_incremental_never_does(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir)
    gone = [nct(r) for r in records[:3]]
    registry.remove(*gone)
    incremental = fast_sync(registry, warehouse_dir)
    assert incremental["retired"] == 0
    full = fast_sync(registry, warehouse_dir, full=True)
    assert (full["retired"], full["versions_written"]) == (3, 0)
    assert rows(warehouse_dir, "SELECT count(*) FROM studies") == [(323,)]
    removed = rows(warehouse_dir, "SELECT nct_id, event, severity FROM changes ORDER BY nct_id")
    assert removed == [(n, "study_removed", "critical") for n in sorted(gone)]
    registry.put(records[0])
    back = fast_sync(registry, warehouse_dir, full=True)
    assert (back["retired"], back["versions_written"]) == (0, 1)
    assert rows(warehouse_dir, "SELECT version, is_removed, is_current FROM study_versions WHERE nct_id = ? "
                               "ORDER BY version", [gone[0]]) == [(1, False, False), (2, True, False), (3, False, True)]
    assert rows(warehouse_dir, "SELECT event FROM changes WHERE nct_id = ? ORDER BY to_version", [gone[0]]) == [
        ("study_removed",), ("study_reappeared",)]


def test_a_full_run_that_saw_less_than_the_total_count_retires_nothing(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir)
    registry.remove(nct(records[0]))
    registry.faults.add("status", status=200, body='{"studies": [], "totalCount": 9999}', times=1, page=1)
    summary = fast_sync(registry, warehouse_dir, full=True)
    assert (summary["studies_seen"], summary["retired"]) == (0, 0)


def test_a_study_that_leaves_a_status_scope_is_stored_as_a_status_change_not_retired(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    recruiting = [r for r in records if r["protocolSection"]["statusModule"]["overallStatus"] == "RECRUITING"]
    mover, withdrawn = recruiting[3], recruiting[7]
    first = fast_sync(registry, warehouse_dir, status=["RECRUITING"])
    assert first["studies_seen"] == len(recruiting)
    day = date.fromisoformat(first["watermark"]) + timedelta(days=1)
    registry.put(mutate.posted_on(mutate.set_status(mover, "ACTIVE_NOT_RECRUITING"), day))
    registry.remove(nct(withdrawn))

    full = fast_sync(registry, warehouse_dir, status=["RECRUITING"], full=True)
    assert (full["studies_seen"], full["left_scope"], full["retired"], full["versions_written"]) == (
        len(recruiting) - 2, 1, 1, 1)
    assert rows(warehouse_dir, "SELECT nct_id, event, old_value, new_value, severity FROM changes "
                               "WHERE event <> 'field_changed' ORDER BY nct_id") == sorted([
        (nct(mover), "status_changed", "RECRUITING", "ACTIVE_NOT_RECRUITING", "notable"),
        (nct(withdrawn), "study_removed", nct(withdrawn), None, "critical")])
    assert rows(warehouse_dir, "SELECT overall_status FROM studies WHERE nct_id = ?", [nct(mover)]) == [
        ("ACTIVE_NOT_RECRUITING",)]
    assert rows(warehouse_dir, "SELECT nct_id, reason FROM scope_exits WHERE run_id = ? ORDER BY nct_id",
                [full["run_id"]]) == sorted([(nct(mover), "left_scope"), (nct(withdrawn), "removed")])
    assert rows(warehouse_dir, "SELECT left_scope, retired FROM sync_runs WHERE run_id = ?", [full["run_id"]]) == [
        (1, 1)]

    # Both are out of the scope now: the next full run neither looks them up nor retires them again.
    again = fast_sync(registry, warehouse_dir, status=["RECRUITING"], full=True)
    assert (again["left_scope"], again["retired"], again["changes_written"]) == (0, 0, 0)
    assert rows(warehouse_dir, "SELECT count(*) FROM scope_exits") == [(2,)]
    # Back in the scope: a member again, so leaving once more is noticed again.
    registry.put(mutate.posted_on(mover, day + timedelta(days=1)))
    fast_sync(registry, warehouse_dir, status=["RECRUITING"])
    registry.put(mutate.posted_on(mutate.set_status(mover, "COMPLETED"), day + timedelta(days=2)))
    last = fast_sync(registry, warehouse_dir, status=["RECRUITING"], full=True)
    assert (last["left_scope"], last["retired"]) == (1, 0)


def test_a_study_the_listing_skipped_is_looked_up_and_kept_not_retired(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    """Paging under a moving data set can skip a study while the counts still add up."""
    fast_sync(registry, warehouse_dir)
    skipped = records[5]
    listing = {"studies": [r for r in records if r is not skipped], "totalCount": len(records) - 1}
    registry.faults.add("status", status=200, body=json.dumps(listing), times=1, page=1)
    full = fast_sync(registry, warehouse_dir, full=True)
    assert (full["studies_seen"], full["left_scope"], full["retired"], full["versions_written"]) == (
        len(records) - 1, 0, 0, 0)  # still published inside the scope: the listing omitted it (issue 13.1)
    assert list(full["reconciliation"]["flags"]) == ["listing_omitted"]
    assert rows(warehouse_dir, "SELECT count(*) FROM scope_exits") == [(0,)]
    assert rows(warehouse_dir, "SELECT count(*) FROM changes") == [(0,)]
    assert rows(warehouse_dir, "SELECT count(*) FROM studies") == [(len(records),)]


def test_a_failed_lookup_of_vanished_studies_retires_nothing_and_commits_the_run(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir)
    registry.remove(nct(records[0]))
    registry.put(mutate.posted_on(mutate.set_status(records[1], "COMPLETED"), date(2030, 1, 2)))
    registry.faults.add("status", status=503, times=-1, param="filter.ids")
    full = fast_sync(registry, warehouse_dir, full=True)
    assert (full["retired"], full["left_scope"], full["versions_written"]) == (0, 0, 1)
    assert rows(warehouse_dir, "SELECT count(*) FROM studies") == [(len(records),)]
    assert rows(warehouse_dir, "SELECT count(*) FROM scope_exits") == [(0,)]


def test_a_rederive_before_the_first_whole_registry_sync_does_not_turn_its_baseline_into_news(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir, ids=[nct(records[0])])
    rederive_changes(warehouse=str(warehouse_dir))
    whole = fast_sync(registry, warehouse_dir)
    assert (whole["mode"], whole["new_studies"], whole["changes_written"]) == ("full", len(records) - 1, 0)
    assert rows(warehouse_dir, "SELECT count(*) FROM changes WHERE event = 'study_added'") == [(0,)]


def test_new_studies_after_the_baseline_are_study_added(registry: FakeRegistry, warehouse_dir: Path,
                                                        records: list[dict[str, Any]]) -> None:
    newcomer = records[10]
    registry.remove(nct(newcomer))
    first = fast_sync(registry, warehouse_dir)
    assert first["changes_written"] == 0  # the baseline is not news
    registry.put(mutate.posted_on(newcomer, date.fromisoformat(first["watermark"]) + timedelta(days=1)))
    fast_sync(registry, warehouse_dir)
    assert rows(warehouse_dir, "SELECT nct_id, event, new_value FROM changes") == [
        (nct(newcomer), "study_added", newcomer["protocolSection"]["identificationModule"]["briefTitle"])]


def test_the_changes_command_filters_and_formats(three_versions: tuple[Path, Any]) -> None:
    warehouse_dir, _ = three_versions
    result = run_cli("changes", "--warehouse", str(warehouse_dir), "--min-severity", "notable", "--format", "json")
    assert result.returncode == 0, result.stderr
    feed = json.loads(result.stdout)
    assert [(c["event"], c["severity"]) for c in feed] == [
        ("status_changed", "critical"), ("date_slipped", "notable"), ("date_slipped", "notable")]
    csv_out = run_cli("changes", "--warehouse", str(warehouse_dir), "--category", "status", "--since", "2026-06-01",
                      "--format", "csv")
    lines = csv_out.stdout.splitlines()
    assert lines[0].split(",")[:6] == ["change_id", "nct_id", "from_version", "to_version", "run_id", "detected_at"]
    # Without the run-specific change_id, run_id and detected_at:
    assert [",".join(line.split(",")[1:4] + line.split(",")[6:]) for line in lines[1:]] == [
        "NCT05766735,2,3,2026-06-01,$.protocolSection.statusModule.overallStatus,overall status,status,"
        "status_changed,RECRUITING,TERMINATED,critical,,",
        "NCT05766735,2,3,2026-06-01,$.protocolSection.statusModule.whyStopped,why stopped,status,"
        "why_stopped_set,,Funding ended,minor,,"]
    bad = run_cli("changes", "--warehouse", str(warehouse_dir), "--event", "exploded")
    assert bad.returncode == 2 and bad.stderr.startswith("trialsync: error: unknown event 'exploded'")


def test_history_shows_every_version_with_what_changed(three_versions: tuple[Path, Any]) -> None:
    warehouse_dir, _ = three_versions
    console = Console(record=True, width=160)
    print_history(warehouse_dir, "NCT05766735", "text", console)
    text = console.export_text()
    assert "NCT05766735: 3 versions" in text
    assert text.index("v1  registry 2025-05-07") < text.index("v2  registry 2026-04-09") < text.index(
        "v3  registry 2026-06-01")
    assert "date_slipped: primary completion date: 2027-04-15 → 2027-05-31 (+46 days)" in text
    assert "critical  status_changed: overall status: RECRUITING → TERMINATED" in text


def test_a_change_the_registry_did_not_date_is_in_the_feed_of_the_day_it_was_seen(
        prefect_api: str, warehouse_dir: Path) -> None:
    """A results submission (``submissionTracking``) keeps the record's lastUpdatePostDate: its change is
    filed under the day its version became valid (the day it was seen), not under the old registry date,
    so `changes --since today`, ``changes_between`` and the report's window all see it."""
    from tests.conftest import STUDIES_DIR, load

    record = load(STUDIES_DIR / "NCT05973799.json")  # a real submission, returned to the sponsor
    before = json.loads(json.dumps(record))
    del before["derivedSection"]["miscInfoModule"]["submissionTracking"]
    with FakeRegistry([before]).start() as registry:
        fast_sync(registry, warehouse_dir, ids=["NCT05973799"])
        registry.put(record)
        fast_sync(registry, warehouse_dir, ids=["NCT05973799"], full=True)
    seen_on = rows(warehouse_dir, "SELECT valid_from FROM study_versions WHERE version = 2")[0][0]
    posted = rows(warehouse_dir, "SELECT registry_updated FROM study_versions WHERE version = 2")[0][0]
    assert posted < seen_on  # the registry's date did not move
    events = {("NCT05973799", "results_submitted"), ("NCT05973799", "results_returned")}
    assert set(rows(warehouse_dir, "SELECT nct_id, event FROM changes_between(?, ?)", [seen_on, seen_on])) >= events
    assert rows(warehouse_dir, "SELECT count(*) FROM changes_between(?, ?)", [posted, posted]) == [(0,)]
    feed = json.loads(run_cli("changes", "--since", seen_on.isoformat(), "--format", "json",
                              "--warehouse", str(warehouse_dir)).stdout)
    assert {(c["nct_id"], c["event"]) for c in feed} >= events


def _first_posted_on(record: dict[str, Any], day: date) -> dict[str, Any]:
    """The record as a study the registry first posted on ``day``."""
    registered = mutate.set_path(record, ("protocolSection", "statusModule", "studyFirstPostDateStruct", "date"),
                                 day.isoformat())
    return mutate.posted_on(registered, day)


def test_a_study_new_to_the_registry_is_announced_even_when_a_new_scopes_first_run_stores_it(
        prefect_api: str, warehouse_dir: Path) -> None:
    """Heads are shared by every scope: the study a new scope's first (baseline) run stores is never new
    to a later run of another scope. A study first posted since the warehouse's last run is news there;
    the older studies the new scope brings in are its baseline, as before; rederive agrees."""
    from flows.inputs import utc_today
    from tests.conftest import real_records

    records = real_records()
    base = [mutate.posted_on(r, date(2026, 11, 1)) for r in records[:10]]
    fresh, old = _first_posted_on(records[100], utc_today()), records[101]
    with FakeRegistry(base).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=5)  # scope "all": the warehouse's first run
        registry.put(fresh, old)
        fast_sync(registry, warehouse_dir, ids=[nct(fresh), nct(old), nct(base[0])])  # a new scope's first run
        fast_sync(registry, warehouse_dir, page_size=5)  # "all" again: both are unchanged for it
    added = "SELECT nct_id FROM changes WHERE event = 'study_added' ORDER BY 1"
    assert rows(warehouse_dir, added) == [(nct(fresh),)]
    rederive_changes(warehouse=str(warehouse_dir))
    assert rows(warehouse_dir, added) == [(nct(fresh),)]


def test_no_first_version_of_the_warehouses_first_run_is_news_whatever_its_posting_date(
        prefect_api: str, warehouse_dir: Path) -> None:
    from flows.inputs import utc_today
    from tests.conftest import real_records

    with FakeRegistry([_first_posted_on(r, utc_today()) for r in real_records()[:5]]).start() as registry:
        fast_sync(registry, warehouse_dir)
    assert rows(warehouse_dir, "SELECT count(*) FROM changes WHERE event = 'study_added'") == [(0,)]
