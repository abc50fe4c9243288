"""Issue 9: backfill a study's past versions from the registry's record history (real Prefect runs)."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from flows.backfill import backfill_history
from flows.derive import rederive_changes
from flows.history import print_history
from pipeline import mutate
from pipeline.errors import HistoryFormatError, RegistryNotFound, RegistryUnavailable
from pipeline.markup import api_form
from pipeline.registry.fake_history import REAL_HISTORY_NCT, FakeHistory, history_from_records, real_history
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import DATA, fast_sync, nct
from tests.test_cli import run_cli
from tests.test_sync import DUCKDB_CLI
from warehouse import Warehouse
from warehouse.check import check

pytestmark = pytest.mark.usefixtures("prefect_api")
NCT = REAL_HISTORY_NCT
HISTORY = real_history(DATA / "ctgov" / "history")
VERSIONS = """SELECT version, registry_version, CAST(registry_updated AS VARCHAR), source, overall_status,
    enrollment_count, enrollment_type FROM study_versions WHERE nct_id = ? ORDER BY version"""
TYPED = """SELECT to_version, CAST(registry_updated AS VARCHAR), event, old_value, new_value FROM changes
    WHERE nct_id = ? AND category IN ('status', 'enrollment', 'registry') AND event <> 'field_changed'
    ORDER BY to_version, event"""
EXPECTED_TYPED = [
    (2, "2018-10-16", "status_changed", "NOT_YET_RECRUITING", "RECRUITING"),
    (8, "2019-07-16", "enrollment_actualized", "ESTIMATED", "ACTUAL"),
    (8, "2019-07-16", "enrollment_changed", "30", "16"),
    (8, "2019-07-16", "status_changed", "RECRUITING", "ACTIVE_NOT_RECRUITING"),
    (10, "2020-04-27", "status_changed", "ACTIVE_NOT_RECRUITING", "COMPLETED"),
]


def rows(warehouse_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql, params or []).fetchall()


def backfill(registry: FakeRegistry, warehouse_dir: Path, *ids: str, **kwargs: Any) -> dict[str, Any]:
    params: dict[str, Any] = dict(api_url=registry.url, warehouse=str(warehouse_dir), request_interval=0.0,
                                  backoff_seconds=0.01, timeout_seconds=5.0, lock_timeout=5.0)
    result: dict[str, Any] = backfill_history(ids=list(ids) or None, **params, **kwargs)
    return result


@pytest.fixture
def history_registry() -> Iterator[FakeRegistry]:
    with FakeRegistry().start() as fake:
        fake.put_history(HISTORY)
        yield fake


def test_backfill_stores_the_ten_real_versions_in_order_with_their_changes(history_registry: FakeRegistry,
                                                                          warehouse_dir: Path) -> None:
    summary = backfill(history_registry, warehouse_dir, NCT)
    assert (summary["fetched"], summary["versions_written"], summary["new_studies"], summary["mode"]) == (
        10, 10, 1, "backfill")
    estimated, actual = (30, "ESTIMATED"), (16, "ACTUAL")
    assert rows(warehouse_dir, VERSIONS, [NCT]) == [
        (1, 0, "2018-09-27", "history", "NOT_YET_RECRUITING", *estimated),
        (2, 1, "2018-10-16", "history", "RECRUITING", *estimated),
        (3, 2, "2018-11-15", "history", "RECRUITING", *estimated),
        (4, 3, "2018-11-16", "history", "RECRUITING", *estimated),
        (5, 4, "2018-12-11", "history", "RECRUITING", *estimated),
        (6, 5, "2019-01-18", "history", "RECRUITING", *estimated),
        (7, 6, "2019-01-22", "history", "RECRUITING", *estimated),
        (8, 7, "2019-07-16", "history", "ACTIVE_NOT_RECRUITING", *actual),
        (9, 8, "2019-12-04", "history", "ACTIVE_NOT_RECRUITING", *actual),
        (10, 9, "2020-04-27", "history", "COMPLETED", *actual),
    ]
    assert rows(warehouse_dir, TYPED, [NCT]) == EXPECTED_TYPED  # no study_added: history is not news
    assert rows(warehouse_dir, "SELECT to_version, event FROM changes WHERE category = 'outcomes'") == [
        (6, "primary_outcome_changed")]  # originalData: RECIST -> iRECIST at v5
    console = Console(record=True, width=200)
    print_history(warehouse_dir, NCT, "text", console)
    text = console.export_text()
    assert "NCT03690141: 10 versions" in text
    assert text.index("v2  registry v1 2018-10-16") < text.index("v8  registry v7 2019-07-16") < text.index(
        "v10  registry v9 2020-04-27")
    assert "status_changed: overall status: ACTIVE_NOT_RECRUITING → COMPLETED" in text
    assert "enrollment_changed: enrollment: 30 → 16 (-46.7%)" in text


def test_every_backfilled_version_has_its_child_table_rows_as_flatten_makes_them(
        history_registry: FakeRegistry, warehouse_dir: Path) -> None:
    """A backfill plans each history record on its own and numbers the versions when it merges them:
    each version's child rows must travel with its final number (they were once left behind, and
    the eligibility, outcomes, ... of every backfilled version were empty)."""
    from pipeline.flatten import flatten
    from pipeline.parse import parse_record

    backfill(history_registry, warehouse_dir, NCT)
    raws = rows(warehouse_dir, "SELECT version, raw FROM study_versions WHERE nct_id = ? ORDER BY version", [NCT])
    assert len(raws) == 10
    for table in ("eligibility", "outcomes", "conditions", "locations", "study_summary"):
        stored = rows(warehouse_dir, f"SELECT version, count(*) FROM {table} WHERE nct_id = ? GROUP BY version "
                                     "ORDER BY version", [NCT])
        expected = [(v, n) for v, raw in raws
                    if (n := len(next(iter(flatten(parse_record(json.loads(raw)).study)[table].values()))))]
        assert stored == expected, table
    assert rows(warehouse_dir, "SELECT count(*) FROM eligibility WHERE nct_id = ?", [NCT]) == [(10,)]


def test_backfilling_twice_stores_nothing_new(history_registry: FakeRegistry, warehouse_dir: Path) -> None:
    backfill(history_registry, warehouse_dir, NCT)
    before = rows(warehouse_dir, "SELECT * EXCLUDE (raw) FROM study_versions ORDER BY version")
    changes = rows(warehouse_dir, "SELECT * FROM changes ORDER BY change_id")
    again = backfill(history_registry, warehouse_dir, NCT)
    assert (again["fetched"], again["versions_written"], again["rewritten"], again["unchanged"],
            again["requests"]) == (0, 0, 0, 1, 1)  # one request: the index
    assert rows(warehouse_dir, "SELECT * EXCLUDE (raw) FROM study_versions ORDER BY version") == before
    assert rows(warehouse_dir, "SELECT * FROM changes ORDER BY change_id") == changes
    assert fast_sync(history_registry, warehouse_dir)["versions_written"] == 0  # the current record is v10


def observe_then_backfill(registry: FakeRegistry, warehouse_dir: Path) -> dict[str, Any]:
    """Two syncs see the study at registry versions 4 and 9; then a backfill merges the other eight."""
    registry.put(api_form(HISTORY.records[4]))  # API v2 sends the captured HTML texts as markdown
    first = fast_sync(registry, warehouse_dir)
    registry.put_history(HISTORY)
    second = fast_sync(registry, warehouse_dir)
    return {"first": first, "second": second, "backfill": backfill(registry, warehouse_dir, NCT)}


@pytest.fixture(scope="module")
def merged(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """``observe_then_backfill`` once for the tests that only read (and rederive, which changes no row)."""
    warehouse_dir = tmp_path_factory.mktemp("merged") / "warehouse"
    with FakeRegistry().start() as fake:
        yield warehouse_dir, observe_then_backfill(fake, warehouse_dir)


def test_backfill_merges_versions_a_sync_observed(merged: tuple[Path, dict[str, Any]]) -> None:
    warehouse_dir, runs = merged
    assert (runs["backfill"]["fetched"], runs["backfill"]["versions_written"]) == (10, 8)
    merged = rows(warehouse_dir, "SELECT version, registry_version, CAST(registry_updated AS VARCHAR), source, "
                                 "run_id FROM study_versions ORDER BY version")
    assert [(v, rv, source) for v, rv, _, source, _ in merged] == [
        (v, v - 1, "api" if v in (5, 10) else "history") for v in range(1, 11)]
    # The observed rows keep their run and learn the registry's number and date.
    assert merged[4][2:] == ("2018-12-11", "api", runs["first"]["run_id"])
    assert merged[9][2:] == ("2020-04-27", "api", runs["second"]["run_id"])
    assert rows(warehouse_dir, TYPED, [NCT]) == EXPECTED_TYPED
    assert rows(warehouse_dir, "SELECT run_id, version FROM run_studies WHERE run_id <> ? ORDER BY version",
                [runs["backfill"]["run_id"]]) == [(runs["first"]["run_id"], 5), (runs["second"]["run_id"], 10)]
    assert rows(warehouse_dir, "SELECT version, is_current FROM studies JOIN study_versions USING (nct_id, version)"
                ) == [(10, True)]
    shell = subprocess.run([str(DUCKDB_CLI), "-readonly", "-csv", "-noheader", str(warehouse_dir / "warehouse.duckdb"),
                            "-c", "SELECT count(*), max(version), count(DISTINCT version) FROM study_versions"],
                           capture_output=True, text=True, timeout=30)
    assert (shell.returncode, shell.stdout.strip()) == (0, "10,10,10"), shell.stderr  # the DuckDB 1.5 shell agrees
    # The rewrite hides the renumbered rows it superseded: no version twice, no orphan child row.
    report = check(warehouse_dir, deep=True)
    assert report.ok, [p.line() for p in report.problems]


def test_rederive_after_a_backfill_gives_the_same_changes(merged: tuple[Path, dict[str, Any]]) -> None:
    warehouse_dir, _ = merged
    query = "SELECT * FROM changes ORDER BY change_id"
    before = rows(warehouse_dir, query)
    rederive_changes(warehouse=str(warehouse_dir))
    assert rows(warehouse_dir, query) == before


def test_syncs_after_a_backfill_continue_the_merged_history(warehouse_dir: Path) -> None:
    with FakeRegistry().start() as registry:
        observe_then_backfill(registry, warehouse_dir)
        registry.put(mutate.posted_on(mutate.set_status(HISTORY.records[9], "TERMINATED", "Sponsor decision"),
                                      date(2020, 6, 1)))
        assert fast_sync(registry, warehouse_dir)["versions_written"] == 1
    assert rows(warehouse_dir, "SELECT version, overall_status FROM studies") == [(11, "TERMINATED")]
    assert rows(warehouse_dir, "SELECT from_version, to_version, new_value FROM changes WHERE to_version = 11 "
                               "AND event = 'status_changed'") == [(10, 11, "TERMINATED")]


def test_studies_as_of_answers_from_backfilled_versions_before_the_first_sync(
        merged: tuple[Path, dict[str, Any]]) -> None:
    warehouse_dir, _ = merged

    def as_of(day: str) -> list[tuple[Any, ...]]:
        return rows(warehouse_dir, "SELECT version, overall_status, enrollment_count, enrollment_type FROM "
                                   "studies_as_of(?) WHERE nct_id = ?", [day, NCT])

    assert as_of("2018-09-26") == []
    assert as_of("2018-10-01") == [(1, "NOT_YET_RECRUITING", 30, "ESTIMATED")]
    assert as_of("2018-12-01") == [(4, "RECRUITING", 30, "ESTIMATED")]
    assert as_of("2019-08-01") == [(8, "ACTIVE_NOT_RECRUITING", 16, "ACTUAL")]
    assert as_of("2026-01-01") == [(10, "COMPLETED", 16, "ACTUAL")]


@pytest.mark.parametrize(("path", "body", "message"), [
    (f"/int/studies/{NCT}/history", '{"versions": []}', "no non-empty 'changes' array"),
    (f"/int/studies/{NCT}/history/3", '{"studyVersion": 3, "record": {}}', "no 'study' object"),
])
def test_a_changed_history_payload_fails_the_run_clearly_and_stores_nothing(
        history_registry: FakeRegistry, warehouse_dir: Path, path: str, body: str, message: str) -> None:
    history_registry.faults.add("status", status=200, body=body, path=path, times=-1)
    with pytest.raises(HistoryFormatError, match=message):
        backfill(history_registry, warehouse_dir, NCT)
    assert not (warehouse_dir / "warehouse.duckdb").exists()


def _built_history(records: list[dict[str, Any]]) -> FakeHistory:
    """A real record's history of four versions derived with ``mutate`` (the last one a bad record)."""
    base = next(r for r in records if r["protocolSection"]["statusModule"]["overallStatus"] == "RECRUITING"
                and len(r["protocolSection"]["statusModule"].get("completionDateStruct", {}).get("date", "")) == 10
                and len(r["protocolSection"].get("contactsLocationsModule", {}).get("locations", [])) >= 2)
    site_closed = mutate.set_site_status(base, 0, "COMPLETED")  # Contacts/Locations only
    slipped = mutate.posted_on(mutate.shift_date(site_closed, "completionDate", 120), date(2026, 9, 1))
    broken = copy.deepcopy(slipped)
    broken["protocolSection"]["statusModule"]["overallStatus"] = "PAUSED"
    return history_from_records([(date(2026, 5, 1), base), (date(2026, 6, 1), site_closed),
                                 (date(2026, 9, 1), slipped), (date(2026, 10, 1), broken)])


def test_status_design_only_skips_other_versions_and_a_bad_version_is_quarantined(
        records: list[dict[str, Any]], warehouse_dir: Path) -> None:
    built = _built_history(records)
    study = nct(built.current)
    assert [c["moduleLabels"] for c in built.changes] == [[], ["Contacts/Locations"], ["Study Status"],
                                                          ["Study Status"]]
    with FakeRegistry().start() as fake:
        fake.put_history(built)
        quick = backfill(fake, warehouse_dir, study, modules=["Study Status", "Study Design"])
        assert (quick["fetched"], quick["versions_written"], quick["quarantined"]) == (3, 2, 1)
        stored = "SELECT version, registry_version FROM study_versions ORDER BY 1"
        assert rows(warehouse_dir, stored) == [(1, 0), (2, 2)]
        assert rows(warehouse_dir, "SELECT reason FROM quarantine")[0][0].startswith("history version 3: ")
        slip = rows(warehouse_dir, "SELECT to_version, event, shift_days FROM changes WHERE category = 'dates'")
        assert slip == [(2, "date_slipped", 120)]
        full = backfill(fake, warehouse_dir, study)  # later, without the option: the skipped version slots in
        assert (full["fetched"], full["versions_written"]) == (2, 1)  # versions 1 and the bad 3
    assert rows(warehouse_dir, stored) == [(1, 0), (2, 1), (3, 2)]
    assert rows(warehouse_dir, "SELECT to_version, event FROM changes WHERE category IN ('sites', 'dates') "
                               "ORDER BY 1") == [(2, "site_status_changed"), (3, "date_slipped")]


def test_backfill_all_covers_every_followed_study_and_skips_those_without_history(
        history_registry: FakeRegistry, records: list[dict[str, Any]], warehouse_dir: Path) -> None:
    history_registry.put(*records[:3])
    fast_sync(history_registry, warehouse_dir)
    summary = backfill(history_registry, warehouse_dir, all_studies=True, batch_size=2)
    assert summary["not_found"] == sorted(nct(r) for r in records[:3])
    assert (summary["studies_seen"], summary["pages"], summary["rewritten"]) == (4, 2, 1)
    assert rows(warehouse_dir, "SELECT mode, scope FROM sync_runs ORDER BY started_at") == [
        ("full", "all"), ("backfill", "backfill:all")]  # not the whole-registry sync scope "all"
    assert rows(warehouse_dir, "SELECT nct_id, count(*) FROM study_versions GROUP BY 1 ORDER BY 2 DESC, 1")[0] == (
        NCT, 10)
    assert rows(warehouse_dir, "SELECT count(*) FROM studies") == [(4,)]


def test_the_backfill_command_validates_input_and_reports(prefect_api: str, history_registry: FakeRegistry,
                                                         tmp_path: Path) -> None:
    warehouse_dir = str(tmp_path / "w")
    for args, message in [([], "give the NCT ids to backfill, or --all"),
                          ([NCT, "--api-url", "http://127.0.0.1:9/other"], "must end with /api/v2")]:
        bad = run_cli("backfill", *args, "--warehouse", warehouse_dir)
        assert bad.returncode == 2 and bad.stderr.startswith("trialsync: error: ") and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    env = {"PREFECT_API_URL": prefect_api}
    ok = run_cli("backfill", NCT, "--api-url", history_registry.url, "--warehouse", warehouse_dir,
                 "--request-interval", "0", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "10 history versions fetched, 10 new versions, 1 studies merged, 0 unchanged" in ok.stdout
    shown = run_cli("history", NCT, "--warehouse", warehouse_dir)
    assert "v2  registry v1 2018-10-16" in shown.stdout
    assert "critical" not in shown.stdout and "status_changed: overall status: NOT_YET_RECRUITING → RECRUITING" in (
        shown.stdout)
    history_registry.faults.add("status", status=200, body='{"changes": []}', path=f"/int/studies/{NCT}/history")
    failed = run_cli("backfill", NCT, "--api-url", history_registry.url, "--warehouse", warehouse_dir,
                     "--request-interval", "0", env=env)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert [line for line in failed.stderr.splitlines() if line.startswith("trialsync: error:")] == [
        f"trialsync: error: unexpected history index of {NCT}: no non-empty 'changes' array (the registry's "
        "undocumented history format may have changed)"]


def _two_histories(records: list[dict[str, Any]]) -> list[FakeHistory]:
    """Two real records, each with a two-version history derived with ``mutate``."""
    out = []
    for record in [r for r in records if r["protocolSection"]["statusModule"]["overallStatus"] == "RECRUITING"][:2]:
        later = mutate.posted_on(mutate.set_enrollment(record, 777), date(2026, 9, 1))
        out.append(history_from_records([(date(2026, 5, 1), record), (date(2026, 9, 1), later)]))
    return out


def test_a_study_whose_history_is_unusable_is_skipped_and_the_others_are_kept(
        records: list[dict[str, Any]], warehouse_dir: Path) -> None:
    good, bad = _two_histories(records)
    with FakeRegistry().start() as fake:
        fake.put_history(good)
        fake.put_history(bad)
        fake.faults.add("status", status=200, body='{"changes": [{"version": 0}]}', times=-1,
                        path=f"/int/studies/{bad.nct_id}/history")
        summary = backfill(fake, warehouse_dir, good.nct_id, bad.nct_id, batch_size=1)
    assert (summary["versions_written"], summary["not_found"], list(summary["failed"])) == (2, [], [bad.nct_id])
    assert summary["failed"][bad.nct_id].startswith(f"unexpected history index of {bad.nct_id}: changes[0] has no")
    assert rows(warehouse_dir, "SELECT nct_id, version FROM study_versions ORDER BY 1, 2") == [
        (good.nct_id, 1), (good.nct_id, 2)]


def test_a_backfill_where_every_study_404s_fails_loudly_and_stores_nothing(warehouse_dir: Path) -> None:
    with FakeRegistry().start() as fake, pytest.raises(RegistryNotFound) as info:
        backfill(fake, warehouse_dir, "NCT00000102", "NCT03690141")
    assert str(info.value).startswith("the registry has no history for any of the 2 studies asked for (every "
                                      "history request answered 404)")
    assert not (warehouse_dir / "warehouse.duckdb").exists()


def test_an_unreachable_registry_mid_backfill_keeps_the_studies_fetched_before_it(
        records: list[dict[str, Any]], warehouse_dir: Path) -> None:
    first, second = _two_histories(records)
    with FakeRegistry().start() as fake:
        fake.put_history(first)
        fake.put_history(second)
        fake.faults.add("status", status=503, times=-1, path=f"/int/studies/{second.nct_id}")
        with pytest.raises(RegistryUnavailable) as info:
            backfill(fake, warehouse_dir, first.nct_id, second.nct_id, batch_size=1, max_attempts=2)
    assert str(info.value).startswith("backfill stopped after 1 of 2 studies (those are committed in run ")
    assert str(info.value).endswith("HTTP 503: Service Unavailable (2 tries)")
    assert rows(warehouse_dir, "SELECT nct_id, count(*) FROM study_versions GROUP BY 1") == [(first.nct_id, 2)]
    assert rows(warehouse_dir, "SELECT mode FROM sync_runs") == [("backfill",)]
