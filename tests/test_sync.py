"""Issue 2 acceptance: real Prefect runs of ``sync_registry`` against the fake registry on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipeline import mutate
from pipeline.errors import RegistryUnavailable
from pipeline.registry.fake_server import FakeRegistry
from pipeline.scope import WATERMARK_OVERLAP
from tests.conftest import fast_sync, nct, snapshot_pairs
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")
DUCKDB_CLI = Path(sys.executable).parent / "duckdb"


def query(warehouse_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql, params or []).fetchall()


def last_update(record: dict[str, Any]) -> str:
    return str(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])


def test_a_sync_loads_every_real_record_with_its_values(registry: FakeRegistry, warehouse_dir: Path,
                                                        records: list[dict[str, Any]]) -> None:
    summary = fast_sync(registry, warehouse_dir)
    assert (summary["mode"], summary["studies_seen"], summary["new_studies"], summary["versions_written"]) == (
        "full", 326, 326, 326)
    rows = {r[0]: r[1:] for r in query(warehouse_dir, """
        SELECT nct_id, overall_status, enrollment_count, start_date_raw, completion_date_raw, version, raw
        FROM studies JOIN (SELECT nct_id, raw FROM study_versions) USING (nct_id)""")}
    assert len(rows) == 326
    for record in records:
        status = record["protocolSection"]["statusModule"]
        enrollment = record["protocolSection"].get("designModule", {}).get("enrollmentInfo", {})
        assert rows[nct(record)][:5] == (
            status.get("overallStatus"), enrollment.get("count"),
            status.get("startDateStruct", {}).get("date"), status.get("completionDateStruct", {}).get("date"), 1)
        assert duckdb.execute("SELECT ?::JSON = ?::JSON", [rows[nct(record)][5], _json(record)]).fetchone() == (
            True,)


def _json(record: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(record).decode()


def _content(warehouse_dir: Path) -> list[tuple[Any, ...]]:
    return query(warehouse_dir, """SELECT nct_id, version, content_hash, valid_from, valid_to, is_current,
        overall_status, enrollment_count, start_date, completion_date_raw, raw::VARCHAR
        FROM study_versions ORDER BY nct_id, version""")


def test_page_size_7_gives_the_same_warehouse_as_page_size_1000(registry: FakeRegistry, tmp_path: Path) -> None:
    small = fast_sync(registry, tmp_path / "small", page_size=7)
    large = fast_sync(registry, tmp_path / "large", page_size=1000)
    assert (small["pages"], large["pages"]) == (47, 1)
    assert _content(tmp_path / "small") == _content(tmp_path / "large")
    assert len(_content(tmp_path / "small")) == 326


def test_a_second_identical_sync_writes_no_versions(registry: FakeRegistry, warehouse_dir: Path) -> None:
    fast_sync(registry, warehouse_dir)
    before = _content(warehouse_dir)
    again = fast_sync(registry, warehouse_dir, full=True)
    assert (again["versions_written"], again["unchanged"], again["studies_seen"]) == (0, 326, 326)
    assert _content(warehouse_dir) == before
    assert query(warehouse_dir, "SELECT count(*) FROM sync_runs") == [(2,)]


def test_real_pairs_derived_only_changes_write_nothing_and_the_real_change_one_version(
        warehouse_dir: Path) -> None:
    pairs = snapshot_pairs()
    with FakeRegistry([older for older, _ in pairs.values()]).start() as registry:
        fast_sync(registry, warehouse_dir)
        registry.put(*(newer for _, newer in pairs.values()))
        summary = fast_sync(registry, warehouse_dir, full=True)
    assert (summary["versions_written"], summary["unchanged"]) == (1, 7)
    versions = query(warehouse_dir, """SELECT version, registry_updated, valid_from, valid_to, is_current,
        primary_completion_date_raw FROM study_versions WHERE nct_id = 'NCT05766735' ORDER BY version""")
    assert versions == [
        (1, date(2025, 5, 7), date(2025, 5, 7), date(2026, 4, 9), False, "2027-04-15"),
        (2, date(2026, 4, 9), date(2026, 4, 9), None, True, "2027-05-31"),
    ]
    assert query(warehouse_dir, "SELECT count(*) FROM study_versions") == [(9,)]


def test_incremental_sync_fetches_only_the_changed_window(registry: FakeRegistry, warehouse_dir: Path,
                                                          records: list[dict[str, Any]]) -> None:
    first = fast_sync(registry, warehouse_dir)
    watermark = date.fromisoformat(first["watermark"])
    assert watermark == max(date.fromisoformat(last_update(r)) for r in records)
    day = watermark + timedelta(days=1)
    changed = [mutate.posted_on(mutate.set_enrollment(r, 1000 + i), day) for i, r in enumerate(records[::30][:10])]
    registry.put(*changed)
    registry.requests.clear()
    summary = fast_sync(registry, warehouse_dir)
    since = watermark - WATERMARK_OVERLAP
    assert (summary["mode"], summary["since"]) == ("incremental", since.isoformat())
    assert {r["filter.advanced"] for r in registry.study_requests()} == {
        f"AREA[LastUpdatePostDate]RANGE[{since.isoformat()},MAX]"}
    in_window = {nct(r) for r in records if last_update(r) >= since.isoformat()} | {nct(r) for r in changed}
    assert summary["studies_seen"] == len(in_window) < 30
    assert summary["versions_written"] == 10
    assert sorted(r[0] for r in query(warehouse_dir, "SELECT nct_id FROM study_versions WHERE version = 2")) == \
        sorted(nct(r) for r in changed)


def test_transient_faults_are_retried_and_the_run_succeeds(registry: FakeRegistry, warehouse_dir: Path) -> None:
    registry.faults.add("status", status=429, retry_after="0", times=2, page=1)
    registry.faults.add("status", status=503, times=1, page=2)
    registry.faults.add("delay", delay=2.5, times=1, page=3)
    summary = fast_sync(registry, warehouse_dir, page_size=100, timeout_seconds=1.0)
    assert (summary["pages"], summary["versions_written"]) == (4, 326)
    assert [f.hits for f in registry.faults.rules] == [2, 1, 1]


def test_a_persistent_500_fails_the_run_and_leaves_the_warehouse_as_it_was(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir, page_size=100)
    catalog = (warehouse_dir / "warehouse.duckdb").read_bytes()
    before = _content(warehouse_dir)
    registry.put(*(mutate.set_status(r, "COMPLETED") for r in records[:150]))
    registry.faults.add("status", status=500, times=-1, page=3, body="Internal Server Error")
    with pytest.raises(RegistryUnavailable, match="HTTP 500: Internal Server Error"):
        fast_sync(registry, warehouse_dir, page_size=100, full=True, max_attempts=2)
    assert (warehouse_dir / "warehouse.duckdb").read_bytes() == catalog
    assert _content(warehouse_dir) == before
    assert len(list((warehouse_dir / "runs").iterdir())) == 1  # the failed run's files are gone
    assert query(warehouse_dir, "SELECT count(*) FROM sync_runs") == [(1,)]


def test_readers_see_the_old_data_until_the_run_commits(registry: FakeRegistry, warehouse_dir: Path,
                                                        records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir, page_size=100)
    registry.put(*(mutate.set_status(r, "SUSPENDED") for r in records[:250]))
    registry.faults.add("delay", delay=4.0, times=1, page=4)  # the run stalls after 3 staged pages
    result: dict[str, Any] = {}
    sync = threading.Thread(target=lambda: result.update(fast_sync(registry, warehouse_dir, page_size=100,
                                                                   full=True, timeout_seconds=30)))
    sync.start()
    deadline = time.monotonic() + 60
    while not any(p.get("pageToken") for p in registry.study_requests()[-1:]) or \
            len(registry.study_requests()) < 5:
        assert time.monotonic() < deadline, "the sync never reached page 4"
        time.sleep(0.05)
    sql = "SELECT count(*), count(*) FILTER (overall_status = 'SUSPENDED') FROM study_versions"
    during = subprocess.run([str(DUCKDB_CLI), "-readonly", "-csv", "-noheader",
                             str(warehouse_dir / "warehouse.duckdb"), "-c", sql],
                            capture_output=True, text=True, timeout=30)
    assert during.returncode == 0, during.stderr
    assert during.stdout.strip() == "326,0"
    assert sync.is_alive(), "the sync finished before the reader looked; the test proved nothing"
    sync.join(timeout=60)
    assert result["versions_written"] == 250
    after = subprocess.run([str(DUCKDB_CLI), "-readonly", "-csv", "-noheader",
                            str(warehouse_dir / "warehouse.duckdb"), "-c", sql],
                           capture_output=True, text=True, timeout=30)
    assert after.stdout.strip() == "576,250"


def test_a_record_that_appears_days_after_its_posting_date_is_still_fetched_incrementally(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    """Real records carry ESTIMATED posting dates and Sunday postings: a record can show up in the
    registry days after its lastUpdatePostDate. The window's overlap covers it."""
    first = fast_sync(registry, warehouse_dir)
    watermark = date.fromisoformat(first["watermark"])
    late = mutate.posted_on(mutate.set_enrollment(records[7], 4321), watermark - timedelta(days=6))
    registry.put(late)
    summary = fast_sync(registry, warehouse_dir)
    assert summary["mode"] == "incremental" and summary["since"] <= (watermark - timedelta(days=6)).isoformat()
    assert query(warehouse_dir, "SELECT version, enrollment_count FROM studies WHERE nct_id = ?", [nct(late)]) == [
        (2, 4321)]
