"""Faults from the registry, served by the fake over loopback HTTP into real Prefect runs.

Transient faults are retried within a bounded budget and the run stores exactly what a clean run
stores; records that do not fit are quarantined with a reason while the rest commits; a run that
cannot complete fails with a one-line reason and leaves the warehouse as it was.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import mutate
from pipeline.errors import PageTokenRejected, RegistryError, RegistryUnavailable
from pipeline.registry.client import RegistryClient, RetryPolicy
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import STUDIES_DIR, fast_sync, load, nct, real_records, snapshot_pairs
from tests.reliability.support import leftovers, pick, query, state

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_api")]
SIZE = 20  # 100 studies in 5 pages


@pytest.fixture
def small() -> Any:
    with FakeRegistry(real_records()[:100]).start() as fake:
        yield fake


def stored_once_each(warehouse: Path, n: int = 100) -> None:
    assert query(warehouse, "SELECT count(*), count(DISTINCT nct_id) FROM study_versions") == [(n, n)]
    assert query(warehouse, "SELECT count(*), count(DISTINCT nct_id) FROM run_studies") == [(n, n)]
    assert query(warehouse, "SELECT count(*) FROM quarantine") == [(0,)]


# Each: the faults (kind, options), extra sync options. Every one of them is injected into one run.
TRANSIENT_FAULTS: dict[str, tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]] = {
    "429 storm with Retry-After": ([("status", dict(status=429, retry_after="0", times=6, page=2,
                                                    body="Too Many Requests"))], {}),
    "5xx burst": ([("status", dict(status=500, times=2, page=1)), ("status", dict(status=502, times=2, page=3)),
                   ("status", dict(status=503, times=3, page=4)), ("status", dict(status=504, times=1, page=5))], {}),
    "read timeouts": ([("delay", dict(delay=2.5, times=2, page=3))], {"timeout_seconds": 1.0}),
    "connection resets": ([("reset", dict(times=3, page=2)), ("reset", dict(times=1, page=5))], {}),
    "truncated JSON bodies": ([("truncate", dict(times=2, page=4))], {}),
    "connection cut mid-body": ([("cut", dict(times=2, page=1)), ("cut", dict(times=1, page=5))], {}),
}


@pytest.mark.parametrize("case", pick(list(TRANSIENT_FAULTS), ["5xx burst", "connection cut mid-body"]))
def test_transient_faults_are_retried_and_the_run_stores_what_a_clean_run_does(
        case: str, small: FakeRegistry, warehouse_dir: Path) -> None:
    faults, options = TRANSIENT_FAULTS[case]
    rules = [small.faults.add(kind, **kwargs) for kind, kwargs in faults]
    summary = fast_sync(small, warehouse_dir, page_size=SIZE, **options)
    assert [rule.hits for rule in rules] == [kwargs["times"] for _, kwargs in faults]
    assert (summary["pages"], summary["studies_seen"], summary["versions_written"]) == (5, 100, 100)
    stored_once_each(warehouse_dir)


def test_a_429_storm_beyond_the_retry_budget_fails_clearly_after_bounded_tries_and_changes_nothing(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    fast_sync(small, warehouse_dir, page_size=SIZE)
    before, catalog = state(warehouse_dir), (warehouse_dir / "warehouse.duckdb").read_bytes()
    small.put(*(mutate.set_status(r, "COMPLETED") for r in real_records()[:100]))
    small.faults.add("status", status=429, retry_after="0", times=-1, page=3, body="Too Many Requests")
    small.requests.clear()
    with pytest.raises(RegistryUnavailable, match=r"^HTTP 429: Too Many Requests \(3 tries\)$"):
        fast_sync(small, warehouse_dir, page_size=SIZE, full=True, max_attempts=3)
    page3 = [p for p in small.study_requests() if small.page_of(p) == 3]
    assert len(page3) == 3  # --max-attempts is the total: Prefect task retries do not multiply it
    assert (warehouse_dir / "warehouse.duckdb").read_bytes() == catalog
    assert state(warehouse_dir) == before
    assert [p.name for p in (warehouse_dir / "runs").iterdir()] == [r[0] for r in query(
        warehouse_dir, "SELECT run_id FROM sync_runs")]


class FakeClock:
    """Time that passes only when the client sleeps (no real waiting in the test)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


def test_a_retry_after_longer_than_the_budget_gives_up_instead_of_sleeping_past_it(small: FakeRegistry) -> None:
    small.faults.add("status", status=429, retry_after="3600", times=-1, body="Too Many Requests")
    clock = FakeClock()
    client = RegistryClient(small.url, min_interval=0, sleep=clock.sleep, monotonic=clock.monotonic,
                            retry=RetryPolicy(attempts=8, budget_seconds=600, retry_after_max=300))
    with pytest.raises(RegistryUnavailable) as info:
        client.get_page({}, None, 1)
    assert clock.sleeps == [300.0, 300.0]  # Retry-After capped at 300 s; a third wait would pass 600 s
    assert str(info.value) == ("HTTP 429: Too Many Requests (3 tries; would wait 300s, beyond the 600s retry budget "
                               "(600s spent))")


def test_an_empty_page_in_the_middle_does_not_end_the_walk(small: FakeRegistry, warehouse_dir: Path) -> None:
    empty = small.faults.add("empty", page=3)
    summary = fast_sync(small, warehouse_dir, page_size=SIZE)
    assert empty.hits == 1
    assert (summary["pages"], summary["studies_seen"], summary["versions_written"]) == (6, 100, 100)
    stored_once_each(warehouse_dir)


def test_the_same_study_on_two_pages_is_stored_and_counted_once(small: FakeRegistry, warehouse_dir: Path) -> None:
    small.faults.add("shift", shift=1, page=3)
    small.faults.add("shift", shift=2, page=5)
    summary = fast_sync(small, warehouse_dir, page_size=SIZE)
    assert summary["studies_seen"] == 100 and summary["unchanged"] == 0 and summary["versions_written"] == 100
    stored_once_each(warehouse_dir)


@pytest.mark.parametrize("reread", ["page overlap", "restart after an expired token"])
def test_a_stale_record_read_twice_in_one_run_is_counted_once(reread: str, warehouse_dir: Path) -> None:
    """Stale records (older than the stored version) on page 1, read again in the same run: by an
    overlapping page 2 or by a walk restarted from page 1. Each study counts once, as stale or unchanged."""
    records = real_records()[:100]
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=SIZE)
        page_1 = sorted(nct(r) for r in records)[:SIZE]
        older = [mutate.posted_on(registry.record(n), date(2000, 1, 3)) for n in page_1[-2:]]
        registry.put(*older)
        if reread == "page overlap":
            registry.faults.add("shift", shift=2, page=2)
        else:
            registry.faults.add("status", status=400, body="pageToken has expired", times=1, page=3)
        summary = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
    assert (summary["studies_seen"], summary["stale"], summary["unchanged"], summary["versions_written"]) == (
        100, 2, 98, 0)
    assert query(warehouse_dir, "SELECT stale, studies_seen FROM sync_runs ORDER BY started_at DESC LIMIT 1") == [
        (2, 100)]


def test_a_lagging_replicas_record_dated_as_the_stored_version_but_from_an_older_snapshot_is_stale(
        warehouse_dir: Path) -> None:
    """Real pair NCT01967030: two downloads with one lastUpdatePostDate, versionHolder 2025-12-23 and
    2026-01-02. The registry edits the newer one without moving the date (a QC submission, real
    submissionTracking of NCT05973799): a new version. A replica still on the older snapshot then
    serves the record as it was: stale (no version, no change, counted), not an edit undone."""
    older, newer = snapshot_pairs()["NCT01967030"]
    assert older["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"] == \
        newer["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]
    tracking = load(STUDIES_DIR / "NCT05973799.json")["derivedSection"]["miscInfoModule"]["submissionTracking"]
    edited = mutate.set_path(newer, ("derivedSection", "miscInfoModule", "submissionTracking"), tracking)
    others = real_records()[:30]
    with FakeRegistry([*others, older]).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=SIZE)
        registry.put(edited)
        edit = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
        assert (edit["versions_written"], edit["stale"]) == (1, 0)
        registry.put(older)  # the lagging replica
        lagging = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
        assert (lagging["versions_written"], lagging["stale"], lagging["changes_written"]) == (0, 1, 0)
        registry.put(edited)  # caught up: nothing to undo
        caught_up = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
        assert (caught_up["versions_written"], caught_up["stale"], caught_up["changes_written"]) == (0, 0, 0)
    assert query(warehouse_dir, "SELECT version, is_current FROM study_versions WHERE nct_id = 'NCT01967030' "
                                "ORDER BY version") == [(1, False), (2, True)]
    assert query(warehouse_dir, "SELECT DISTINCT to_version, category FROM changes WHERE nct_id = 'NCT01967030' "
                                "AND event <> 'study_added'") == [(2, "results")]


@pytest.mark.parametrize("damaged", ["2099-01-01", "2026-13-45"])
def test_a_stored_version_with_a_damaged_snapshot_day_does_not_make_the_next_edits_stale(
        warehouse_dir: Path, damaged: str) -> None:
    """The stored version's versionHolder is damaged (a day later than any snapshot can be, or no real
    day): the study's later same-day edits (a QC submission, which moves no date) are
    new versions, not taken for a lagging replica's records forever."""
    older, newer = snapshot_pairs()["NCT01967030"]
    holder = ("derivedSection", "miscInfoModule", "versionHolder")
    stored = mutate.set_path(older, holder, damaged)
    tracking = load(STUDIES_DIR / "NCT05973799.json")["derivedSection"]["miscInfoModule"]["submissionTracking"]
    edited = mutate.set_path(newer, ("derivedSection", "miscInfoModule", "submissionTracking"), tracking)
    with FakeRegistry([*real_records()[:30], stored]).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=SIZE)
        registry.put(edited)
        edit = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
    assert (edit["versions_written"], edit["stale"]) == (1, 0)
    assert query(warehouse_dir, "SELECT version, is_current FROM study_versions WHERE nct_id = 'NCT01967030' "
                                "ORDER BY version") == [(1, False), (2, True)]


def test_an_expired_page_token_restarts_the_walk_and_each_study_is_staged_once(warehouse_dir: Path) -> None:
    with FakeRegistry(real_records()[:100]).start() as registry:
        # Page 4's token has expired (the registry's own 400 text), once: a time-to-live here would make
        # the restarted walk race the clock on a loaded machine.
        registry.faults.add("status", status=400, body="pageToken has expired", times=1, page=4)
        summary = fast_sync(registry, warehouse_dir, page_size=SIZE, timeout_seconds=5)
        pages = [registry.page_of(p) for p in registry.study_requests()]
    assert pages == [1, 2, 3, 4, 1, 2, 3, 4, 5]
    assert (summary["restarts"], summary["pages"], summary["studies_seen"], summary["versions_written"]) == (
        1, 5, 100, 100)
    stored_once_each(warehouse_dir)


def test_a_page_token_that_keeps_expiring_fails_clearly_after_bounded_restarts(warehouse_dir: Path) -> None:
    with FakeRegistry(real_records()[:100], token_ttl=0.2).start() as registry:
        registry.faults.add("delay", delay=0.4, times=-1, page=2)
        with pytest.raises(PageTokenRejected) as info:
            fast_sync(registry, warehouse_dir, page_size=SIZE)
        assert [registry.page_of(p) for p in registry.study_requests()] == [1, 2] * 3
    assert str(info.value) == "HTTP 400: pageToken has expired (page 2; gave up after 2 fresh starts from page 1)"
    assert not (warehouse_dir / "warehouse.duckdb").exists()
    assert [p.name for p in (warehouse_dir / "runs").iterdir()] == []


def test_a_body_that_is_not_a_page_fails_clearly_without_retrying_and_changes_nothing(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    small.faults.add("status", status=200, body='{"error": "maintenance"}', times=-1, page=2)
    with pytest.raises(RegistryError, match=r"^unexpected /studies body: no 'studies' array$"):
        fast_sync(small, warehouse_dir, page_size=SIZE)
    assert [small.page_of(p) for p in small.study_requests()] == [1, 2]
    assert not (warehouse_dir / "warehouse.duckdb").exists()


def test_records_with_unknown_enum_values_are_quarantined_with_the_reason_and_the_rest_commits(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    real = real_records()
    design = ("protocolSection", "designModule")
    bad = [mutate.set_status(real[0], "PAUSED_BY_SPONSOR"),
           mutate.set_path(real[1], (*design, "phases"), ["PHASE5"]),
           mutate.set_path(real[2], (*design, "studyType"), "REGISTRY")]
    small.put(*bad)
    summary = fast_sync(small, warehouse_dir, page_size=SIZE)
    assert (summary["versions_written"], summary["quarantined"]) == (97, 3)
    rows = query(warehouse_dir, "SELECT nct_id, reason, raw FROM quarantine ORDER BY nct_id")
    assert [(r[0], r[1]) for r in rows] == sorted([
        (nct(bad[0]), "schema: Invalid enum value 'PAUSED_BY_SPONSOR' - at `$.protocolSection.statusModule."
                      "overallStatus`"),
        (nct(bad[1]), "schema: Invalid enum value 'PHASE5' - at `$.protocolSection.designModule.phases[0]`"),
        (nct(bad[2]), "schema: Invalid enum value 'REGISTRY' - at `$.protocolSection.designModule.studyType`"),
    ])
    assert [orjson.loads(r[2]) for r in rows] == sorted(bad, key=nct)
    assert query(warehouse_dir, f"SELECT count(*) FROM study_versions WHERE nct_id IN "
                                f"('{nct(bad[0])}', '{nct(bad[1])}', '{nct(bad[2])}')") == [(0,)]


def test_records_missing_sections_are_stored_when_optional_and_quarantined_when_not(
        small: FakeRegistry, warehouse_dir: Path) -> None:
    real = real_records()
    optional = [("derivedSection",), ("protocolSection", "designModule"),
                ("protocolSection", "sponsorCollaboratorsModule"), ("protocolSection", "conditionsModule")]
    trimmed = [mutate.drop_path(real[i], path) for i, path in enumerate(optional)]
    small.put(*trimmed)
    essential = [mutate.drop_path(real[10], ("protocolSection",)),
                 mutate.drop_path(real[11], ("protocolSection", "identificationModule")),
                 mutate.drop_path(real[12], ("protocolSection", "statusModule"))]
    small.remove(*(nct(r) for r in real[10:13]))
    small.put(*essential)  # the fake serves malformed records as they are
    summary = fast_sync(small, warehouse_dir, page_size=SIZE)
    assert (summary["studies_seen"], summary["versions_written"], summary["quarantined"]) == (100, 97, 3)
    stored = dict(query(warehouse_dir, "SELECT nct_id, (study_type IS NULL, lead_sponsor IS NULL, "
                                       "conditions = []) FROM studies"))
    assert [stored[nct(t)] for t in trimmed] == [
        (False, False, False), (True, False, False), (False, True, False), (False, False, True)]
    reasons = query(warehouse_dir, "SELECT nct_id, reason FROM quarantine ORDER BY reason")
    assert [(n, reason.split(" (")[0]) for n, reason in reasons] == [
        (nct(real[12]), "incomplete record: no protocolSection.statusModule.overallStatus"),
        (None, "record has no protocolSection"),
        (None, "record has no protocolSection.identificationModule.nctId")]


def test_a_3_6_mb_record_is_stored_whole(small: FakeRegistry, warehouse_dir: Path) -> None:
    largest = load(STUDIES_DIR / "NCT02513394.json")  # the largest real record, 1.4 MB
    big = mutate.enlarge_sites(largest, 3_600_000)
    size = len(orjson.dumps(big))
    assert 3_600_000 <= size < 4_000_000
    small.put(big)
    studies = len(small.nct_ids())  # 100, or 101 if the record was not among them
    summary = fast_sync(small, warehouse_dir, page_size=SIZE)
    assert (summary["versions_written"], summary["studies_seen"]) == (studies, studies)
    rows = query(warehouse_dir, "SELECT strlen(raw::VARCHAR), json_array_length(raw, "
                                "'$.protocolSection.contactsLocationsModule.locations'), content_hash "
                                "FROM study_versions WHERE nct_id = 'NCT02513394'")
    sites = big["protocolSection"]["contactsLocationsModule"]["locations"]
    assert rows[0][:2] == (size, len(sites))
    assert query(warehouse_dir, "SELECT raw FROM study_versions WHERE nct_id = 'NCT02513394'")[0][0] == \
        orjson.dumps(big).decode()
    assert leftovers(warehouse_dir) == []
