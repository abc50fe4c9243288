"""Listings that cannot be trusted whole: a walk that would never end, records outside the scope's own
filters, a listing short of the registry's count, an answer without end. Real HTTP to the fake registry
(or a loopback server of the test's own) and real sync runs."""

from __future__ import annotations

import contextlib
import socket
import threading
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.errors import RegistryError, RegistryUnavailable
from pipeline.registry import client as client_module
from pipeline.registry.client import RegistryClient, RetryPolicy
from pipeline.registry.fake_server import FakeRegistry
from pipeline.registry.pages import page_from_body
from tests.conftest import fast_sync, nct, real_records
from tests.reliability.support import query


def _posted(records: list[dict[str, Any]], day: date) -> list[dict[str, Any]]:
    return [mutate.posted_on(r, day) for r in records]


@pytest.mark.parametrize("page", [1, 2])
def test_a_stuck_cursor_with_fresh_tokens_stops_the_walk_instead_of_looping(
        prefect_api: str, warehouse_dir: Path, page: int) -> None:
    """Each answer repeats the same page with a new token: no token repeats, so only the registry's own
    count (or pages without a new study) can tell the walk is going nowhere."""
    with FakeRegistry(real_records()[:12]).start() as registry:
        registry.faults.add("stuck", times=-1, page=page)
        with pytest.raises(RegistryError, match=r"stopping the walk instead of looping"):
            fast_sync(registry, warehouse_dir, page_size=5)
        pages = len(registry.study_requests())
        assert 3 < pages <= 3 + 5  # 12 studies at 5 a page need 3; 5 pages of slack
        with RegistryClient(registry.url, min_interval=0) as client, \
                pytest.raises(RegistryError, match=r"stopping the walk instead of looping"):
            list(client.iter_pages({"pageSize": "5"}))
    assert not (warehouse_dir / "warehouse.duckdb").exists()  # nothing committed


def test_pages_without_a_new_study_stop_a_walk_that_has_no_count() -> None:
    from pipeline.registry.pages import MAX_IDLE_PAGES, check_walk_length

    check_walk_length(50, MAX_IDLE_PAGES - 1, None, 5, "u")  # no count: only idleness can tell
    with pytest.raises(RegistryError, match=rf"{MAX_IDLE_PAGES} pages in a row without a study not seen before"):
        check_walk_length(50, MAX_IDLE_PAGES, None, 5, "u")
    check_walk_length(600 + 60, 0, 600_000, 1000, "u")  # 10% slack on a long listing (posted while paging)
    with pytest.raises(RegistryError, match=r"661 pages for a listing of 600000 studies at 1000 a page"):
        check_walk_length(600 + 61, 0, 600_000, 1000, "u")


@pytest.mark.parametrize("token", [12345, ["t"], {"t": 1}, True])
def test_a_page_token_that_is_not_a_string_is_a_broken_answer_not_the_last_page(token: Any) -> None:
    import orjson

    body = orjson.dumps({"studies": [], "nextPageToken": token, "totalCount": 12})
    with pytest.raises(RegistryError, match=r"nextPageToken is a .*, not a string"):
        page_from_body(body, 1, "u")
    assert page_from_body(orjson.dumps({"studies": [], "nextPageToken": "abc"}), 1, "u").next_token == "abc"
    assert page_from_body(orjson.dumps({"studies": []}), 1, "u").next_token is None


@pytest.mark.parametrize("total", [True, -3, "12", 1.5])
def test_a_total_count_that_is_not_a_count_is_taken_as_absent(total: Any) -> None:
    import orjson

    assert page_from_body(orjson.dumps({"studies": [], "totalCount": total}), 1, "u").total_count is None


def test_records_listed_outside_a_status_scope_are_quarantined_not_announced_as_added(
        prefect_api: str, warehouse_dir: Path) -> None:
    """A registry (or a rewriting proxy) that ignores ``filter.overallStatus`` lists studies of other
    statuses: none of them may join the scope, be announced as added, then as having left it."""
    records = real_records()[:40]
    statuses = {nct(r): r["protocolSection"]["statusModule"]["overallStatus"] for r in records}
    wanted = sorted({"COMPLETED", "TERMINATED"} & set(statuses.values()))
    inside = sorted(n for n, s in statuses.items() if s in wanted)
    outside = sorted(n for n, s in statuses.items() if s not in wanted)
    assert inside and outside
    with FakeRegistry(records).start() as registry:
        registry.faults.add("ignore_filter", times=-1, param="filter.overallStatus")
        summary = fast_sync(registry, warehouse_dir, status=wanted, page_size=50)
        assert query(warehouse_dir, "SELECT nct_id FROM studies ORDER BY 1") == [(n,) for n in inside]
        assert summary["quarantined"] == len(outside)
        reasons = query(warehouse_dir, "SELECT nct_id, reason FROM quarantine ORDER BY 1")
        assert [n for n, _ in reasons] == outside
        assert all("listed outside the scope (status " in r and "the registry ignored a filter" in r
                   for _, r in reasons)
        registry.faults.clear()
        second = fast_sync(registry, warehouse_dir, status=wanted, page_size=50, full=True)
    assert (second["versions_written"], second["left_scope"], second["retired"]) == (0, 0, 0)
    assert query(warehouse_dir, "SELECT count(*) FROM changes") == [(0,)]


def test_a_record_of_another_study_in_an_ids_scope_is_quarantined_not_stored(
        prefect_api: str, warehouse_dir: Path) -> None:
    records = real_records()[:6]
    asked = [nct(r) for r in records[:2]]
    with FakeRegistry(records).start() as registry:
        registry.faults.add("ignore_filter", times=-1, param="filter.ids")
        fast_sync(registry, warehouse_dir, ids=asked)
    assert query(warehouse_dir, "SELECT nct_id FROM studies ORDER BY 1") == [(n,) for n in sorted(asked)]
    assert query(warehouse_dir, "SELECT nct_id FROM quarantine ORDER BY 1") == [(nct(r),) for r in records[2:]]
    assert {r for (r,) in query(warehouse_dir, "SELECT DISTINCT reason FROM quarantine")} == {
        "listed outside the scope (not one of the scope's ids): the registry ignored a filter"}


def test_an_incremental_run_short_of_the_registrys_count_keeps_the_watermark_so_the_next_sees_what_it_missed(
        prefect_api: str, warehouse_dir: Path) -> None:
    """The listing leaves a terminated study out while its totalCount counts it; a later study moves the
    run's newest update on. Were the watermark moved to it, the terminated study (updated earlier)
    would fall outside every later incremental window."""
    first_day = date(2026, 11, 1)
    base = _posted(real_records()[:10], first_day)
    missed, later = base[2], base[6]
    with FakeRegistry(base).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=5)
        registry.put(mutate.set_status(mutate.posted_on(missed, first_day + timedelta(days=4)), "TERMINATED"),
                     mutate.set_enrollment(mutate.posted_on(later, first_day + timedelta(days=24)), 7))
        registry.faults.add("drop", times=-1, nct_ids=(nct(missed),))
        short = fast_sync(registry, warehouse_dir, page_size=5)
        assert short["reconciliation"]["flags"]["total_count"].startswith("saw 9 of the 10 studies")
        assert short["watermark"] == first_day.isoformat()  # not the 25th: the listing was short
        registry.faults.clear()
        fast_sync(registry, warehouse_dir, page_size=5)
    assert query(warehouse_dir, f"SELECT overall_status FROM studies WHERE nct_id = '{nct(missed)}'") == [
        ("TERMINATED",)]
    assert ("status_changed", "TERMINATED") in query(
        warehouse_dir, f"SELECT event, new_value FROM changes WHERE nct_id = '{nct(missed)}'")


class _Flood:
    """A loopback server answering 200 with a chunked body that never ends."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/api/v2"
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
                chunk = b" " * 65536
                while not self.stop.is_set():
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


def test_an_answer_without_end_fails_at_the_size_limit_instead_of_filling_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_BODY_BYTES", 4 << 20)
    server = _Flood()
    try:
        client = RegistryClient(server.url, min_interval=0, retry=RetryPolicy(attempts=5, budget_seconds=30))
        with pytest.raises(RegistryError, match=r"the answer is larger than 4 MB") as info:
            client.get_page({}, None, 1)
    finally:
        server.close()
    assert not isinstance(info.value, RegistryUnavailable) and client.requests_made == 1  # not tried again


def test_a_maintenance_page_served_as_200_fails_naming_its_title() -> None:
    page = ("<!DOCTYPE html><html><head><title>ClinicalTrials.gov is down for maintenance</title></head>"
            "<body><p>Back soon.</p></body></html>")
    with FakeRegistry(real_records()[:3]).start() as registry:
        registry.faults.add("status", status=200, times=-1, body=page, content_type="text/html")
        client = RegistryClient(registry.url, min_interval=0, retry=RetryPolicy(attempts=2, backoff_base=0.01))
        with pytest.raises(RegistryUnavailable, match=r"invalid JSON in response \(.*\): ClinicalTrials.gov is down "
                                                      r"for maintenance \(2 tries"):
            client.get_page({}, None, 1)


def test_a_study_met_again_at_a_newer_version_on_a_later_page_counts_once_as_seen() -> None:
    from flows.page_walk import _first_met

    first, second = real_records()[:2]
    newer = mutate.set_enrollment(first, 7)  # updated between two pages of a moving listing
    no_id = mutate.set_path(second, ("protocolSection", "identificationModule", "nctId"), None)
    assert _first_met([first, second], set()) == 2
    assert _first_met([newer, newer, no_id, no_id], {nct(first), nct(second)}) == 2  # the two without an id


@pytest.mark.parametrize("page", [4, 7, 10])
def test_a_walk_restarted_late_by_an_expired_token_is_not_taken_for_a_stuck_cursor(
        prefect_api: str, warehouse_dir: Path, page: int) -> None:
    """The pages read again from page 1 bring no study the run had not met: they are not idle pages."""
    with FakeRegistry(real_records()[:100]).start() as registry:
        registry.faults.add("status", status=400, body="pageToken has expired", times=1, page=page)
        summary = fast_sync(registry, warehouse_dir, page_size=10)
    assert (summary["restarts"], summary["studies_seen"], summary["versions_written"]) == (1, 100, 100)


def test_a_study_asked_for_by_an_alias_id_is_stored_not_quarantined(prefect_api: str, warehouse_dir: Path) -> None:
    """``filter.ids`` finds a study by its id or an alias (nctIdAliases): its record is in the scope."""
    record, *others = real_records()[:5]
    merged = mutate.set_path(record, ("protocolSection", "identificationModule", "nctIdAliases"), ["NCT09999991"])
    asked = ["NCT09999991", nct(others[0])]
    with FakeRegistry([merged, *others]).start() as registry:
        summary = fast_sync(registry, warehouse_dir, ids=asked)
        full = fast_sync(registry, warehouse_dir, ids=asked, full=True)
    assert (summary["versions_written"], summary["quarantined"]) == (2, 0)
    assert query(warehouse_dir, "SELECT nct_id FROM studies ORDER BY 1") == sorted([(nct(record),), (asked[1],)])
    for run in (summary, full):  # the alias was found: neither missing nor its study unexpected
        assert not {"missing_ids", "unexpected_ids"} & run["reconciliation"]["flags"].keys(), run["reconciliation"]


def test_the_fake_registry_prints_nothing_when_a_client_hangs_up_mid_answer(
        capfd: pytest.CaptureFixture[str]) -> None:
    """A timed-out try or a killed sync hangs up mid-answer; the server's traceback of it used to land in
    whichever test's output was being captured then."""
    import time

    with FakeRegistry(real_records()[:300]).start() as registry:
        host, port = registry.url.split("//")[1].split("/")[0].split(":")
        for _ in range(3):
            with socket.create_connection((host, int(port))) as conn:
                conn.sendall(b"GET /api/v2/studies?pageSize=1000 HTTP/1.1\r\nHost: x\r\n"
                             b"Accept-Encoding: identity\r\n\r\n")
                conn.recv(100)
        time.sleep(0.5)
    assert capfd.readouterr().err == ""


def test_a_future_dated_record_stalls_no_incremental_run_even_when_an_older_release_stored_its_date(
        prefect_api: str, warehouse_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record dated 2099 (a damaged bulk file's) once became the scope's watermark, and every later
    incremental run asked for updates since 2098. The watermark read is capped at the run's next day,
    and the study's later real records are not taken for stale against its bogus date."""
    from datetime import UTC, datetime

    import flows.sync

    today = datetime.now(UTC).date()
    records = real_records()[:6]
    bogus, other = mutate.posted_on(records[0], date(2099, 1, 1)), records[1]
    with FakeRegistry([bogus, *records[1:]]).start() as registry:
        with monkeypatch.context() as older_release:  # wrote the newest date seen, whatever it was
            older_release.setattr(flows.sync, "next_watermark",
                                  lambda previous, newest, day: max(filter(None, [previous, newest]), default=None))
            fast_sync(registry, warehouse_dir)
        assert query(warehouse_dir, "SELECT max(watermark) FROM sync_runs") == [(date(2099, 1, 1),)]
        registry.put(mutate.set_enrollment(mutate.posted_on(records[0], today), 7),
                     mutate.set_enrollment(mutate.posted_on(other, today), 4321))
        summary = fast_sync(registry, warehouse_dir)
    assert summary["mode"] == "incremental" and summary["since"] <= today.isoformat()
    assert query(warehouse_dir, "SELECT nct_id, enrollment_count FROM studies WHERE nct_id IN (?, ?) ORDER BY 1"
                 .replace("?", "'{}'").format(*sorted([nct(bogus), nct(other)]))) == sorted(
        [(nct(bogus), 7), (nct(other), 4321)])


class _OnPage(list):  # type: ignore[type-arg]
    """``FakeRegistry.requests`` that runs ``action`` when the listing asks for page ``page`` (before the
    fake answers it): the registry changes between two pages of one walk."""

    def __init__(self, registry: FakeRegistry, page: int, action: Any) -> None:
        super().__init__()
        self.registry, self.page, self.action = registry, page, action

    def append(self, item: Any) -> None:
        super().append(item)
        path, params = item
        if path == "/studies" and self.action is not None and self.registry.page_of(params) == self.page:
            self.action()
            self.action = None


def test_a_study_met_on_two_pages_at_two_versions_has_one_run_studies_row_at_the_newer(
        prefect_api: str, warehouse_dir: Path) -> None:
    """A moving listing: the last study of page 1 is updated before page 2 is read, and page 2 starts one
    study early (offset paging after an insertion), so the run meets it unchanged, then at a new version.
    The run's ``run_studies`` holds it once, at the version the run ended at (it was two rows)."""
    records = sorted(real_records()[:20], key=nct)
    moved = records[9]
    day = max(date.fromisoformat(r["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])
              for r in records) + timedelta(days=1)
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=10)
        registry.faults.add("shift", shift=1, page=2)
        registry.requests = _OnPage(registry, 2, lambda: registry.put(
            mutate.posted_on(mutate.set_enrollment(moved, 4321), day)))
        summary = fast_sync(registry, warehouse_dir, page_size=10, full=True)
    assert (summary["versions_written"], summary["studies_seen"]) == (1, 20)
    run = summary["run_id"]
    assert query(warehouse_dir, f"SELECT version FROM run_studies WHERE run_id = '{run}' AND nct_id = '{nct(moved)}'"
                 ) == [(2,)]
    assert query(warehouse_dir, f"SELECT count(*), count(DISTINCT nct_id) FROM run_studies WHERE run_id = '{run}'"
                 ) == [(20, 20)]
