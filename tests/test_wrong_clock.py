"""Alerts and the report when the host's clock was wrong for a while (a VM resumed from a snapshot, a lost RTC
before NTP caught up). A watch's window starts at its first alerts run less its lookback, by
``detected_at``; a sync whose clock was behind stamps its changes before that start, and a first alerts run
while the clock was ahead moves the start past later changes. Either way changes no run of the watch had
seen were never alerted. What was committed after the watch's first alerts run is news to it, in commit
order. The report's "latest run" is the run committed last, not the one whose clock said latest.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import flows.alerts
import flows.sync
from flows.alerts import send_alerts
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from tests.test_alerts import rows, watchlist


def _clock(offset: timedelta) -> Any:
    class Shifted(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + offset

    return Shifted


def _status(record: dict[str, Any], status: str, day: str) -> dict[str, Any]:
    changed = copy.deepcopy(record)
    changed["protocolSection"]["statusModule"]["overallStatus"] = status
    changed["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"] = day
    return changed


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(("sync_offset", "first_alerts_offset"), [
    (timedelta(days=-17), timedelta(0)),     # a sync with its clock behind, after the watch's first run
    (timedelta(days=-400), timedelta(0)),    # ... a year behind
    (timedelta(0), timedelta(days=60)),      # the watch's first alerts run with the clock ahead
])
def test_a_change_committed_after_the_watchs_first_run_is_alerted_whatever_the_clock_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_offset: timedelta,
        first_alerts_offset: timedelta) -> None:
    records = [copy.deepcopy(r) for r in real_records()[:6]]
    study = nct(records[0])
    feed = tmp_path / "feed.json"
    config = watchlist(tmp_path / "w.yaml", {"feed": {"type": "feed", "path": str(feed), "format": "json"}},
                       [{"name": "one", "channels": ["feed"], "studies": {"ids": [study]}}])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, full=True)
        monkeypatch.setattr(flows.alerts, "_now", lambda: datetime.now(UTC) + first_alerts_offset)
        assert send_alerts(config=str(config), warehouse=str(root))["messages"] == 0
        monkeypatch.undo()

        registry.put(_status(registry.record(study), "SUSPENDED", "2026-11-20"))
        monkeypatch.setattr(flows.sync, "datetime", _clock(sync_offset))
        fast_sync(registry, root, full=True)
        monkeypatch.undo()
        first = send_alerts(config=str(config), warehouse=str(root))

        registry.put(_status(registry.record(study), "TERMINATED", "2026-11-21"))
        fast_sync(registry, root, full=True)
        second = send_alerts(config=str(config), warehouse=str(root))
        again = send_alerts(config=str(config), warehouse=str(root))

    statuses = rows(root, f"SELECT new_value FROM changes WHERE nct_id = '{study}' AND event = 'status_changed' "
                          "ORDER BY to_version")
    assert statuses == [("SUSPENDED",), ("TERMINATED",)]
    shown = sorted(item["title"].split("overall status: ")[-1] for item in json.loads(feed.read_text())["items"])
    assert shown == sorted([f"{_old(root, study, 'SUSPENDED')} → SUSPENDED", "SUSPENDED → TERMINATED"])
    assert (first["messages_sent"], second["messages_sent"], again["messages_sent"]) == (1, 1, 0)


def _old(root: Path, study: str, new: str) -> str:
    return str(rows(root, f"SELECT old_value FROM changes WHERE nct_id = '{study}' AND event = 'status_changed' "
                          f"AND new_value = '{new}'")[0][0])


@pytest.mark.usefixtures("prefect_api")
def test_the_reports_latest_run_is_the_run_committed_last_even_when_its_clock_was_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.report import write_report

    records = [copy.deepcopy(r) for r in real_records()[:6]]
    study = nct(records[0])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, full=True)
        registry.put(_status(registry.record(study), "SUSPENDED", "2026-11-20"))
        fast_sync(registry, root, full=True)
        registry.put(_status(registry.record(study), "TERMINATED", "2026-11-21"))
        monkeypatch.setattr(flows.sync, "datetime", _clock(timedelta(days=-6)))
        last = fast_sync(registry, root, full=True)
        monkeypatch.undo()

    html = write_report(root, tmp_path / "r.html").read_text()
    assert last["run_id"] in html
    assert "TERMINATED" in html
    latest = rows(root, "SELECT run_id FROM sync_runs ORDER BY started_at DESC LIMIT 1")[0][0]
    assert latest != last["run_id"] and latest not in html  # the clock's "latest" is the run before


@pytest.mark.usefixtures("prefect_api")
def test_the_reports_latest_run_is_the_last_sync_not_a_compaction_committed_after_it(
        tmp_path: Path) -> None:
    """A compaction commits a sync_runs row (mode compact) of no changes: the report's default digest,
    of 'the latest run', was of it (empty) instead of the sync before it."""
    from flows.compact import compact_warehouse
    from flows.report import write_report

    records = [copy.deepcopy(r) for r in real_records()[:6]]
    study = nct(records[0])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, full=True)
        registry.put(_status(registry.record(study), "SUSPENDED", "2026-11-20"))
        last = fast_sync(registry, root, full=True)
    compacted = compact_warehouse(warehouse=str(root))

    html = write_report(root, tmp_path / "r.html").read_text()
    assert last["run_id"] in html and compacted["run_id"] not in html
    assert "SUSPENDED" in html


@pytest.mark.usefixtures("prefect_api")
def test_the_commit_order_an_alerts_run_reads_parses_no_manifest_generation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An alerts run reads the run id of every manifest generation ever committed (its cost grows with each
    commit): it parsed and verified each whole generation (~0.1 ms each, about 1 s after 10,000 commits,
    and it evicted the parsed generations a writer in the same process keeps). The order it reads is the
    log's."""
    import warehouse.manifest as manifests
    from warehouse import Warehouse
    from warehouse.alerts import committed_since_first_seen

    records = [copy.deepcopy(r) for r in real_records()[:6]]
    study = nct(records[0])
    config = watchlist(tmp_path / "w.yaml", {"feed": {"type": "feed", "path": str(tmp_path / "f.json"),
                                                      "format": "json"}},
                       [{"name": "one", "channels": ["feed"], "studies": {"ids": [study]}}])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        first = fast_sync(registry, root, full=True)
        alerts = send_alerts(config=str(config), warehouse=str(root))
        syncs = []
        for day, status in (("2026-11-20", "SUSPENDED"), ("2026-11-21", "TERMINATED")):
            registry.put(_status(registry.record(study), status, day))
            syncs.append(fast_sync(registry, root, full=True)["run_id"])
    store = Warehouse(root)
    log = store.log()
    since = next(g.number for g in log if g.run_id == alerts["run_id"])
    parsed = []
    with store.committed() as con:
        manifests._parse_generation.cache_clear()
        parse = manifests.Generation._parse
        monkeypatch.setattr(manifests.Generation, "_parse", classmethod(lambda cls, *a: parsed.append(a[1])
                                                                         or parse(*a)))
        later = committed_since_first_seen(con, store)
        damaged = manifests.generation_path(root, since)
        good, _ = damaged.read_bytes(), damaged.write_bytes(b"{not json")
        with caplog.at_level("WARNING", logger="trialsync.alerts"):
            assert committed_since_first_seen(con, store) == {}  # chosen by detected_at alone, warned
        damaged.write_bytes(good)
    assert f"manifest generation {since} is damaged" in caplog.text
    assert parsed == []
    assert later == {"one": sorted({g.run_id for g in log if g.number > since})}
    assert set(syncs) <= set(later["one"]) and first["run_id"] not in later["one"]
    assert store.run_order() == [(g.number, g.run_id) for g in log]


@pytest.mark.usefixtures("prefect_api")
def test_rederiving_after_a_clock_that_went_back_adds_no_study_of_a_scopes_first_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scope's first run made while the clock was 60 days ahead, its second with the clock right: by
    ``started_at`` the second was the first, so rederive made every study of the real first run a
    ``study_added`` (5 false changes here, a scope's every study in life). The first run is the first
    committed."""
    from flows.derive import rederive_changes

    records = [copy.deepcopy(r) for r in real_records()[:5]]
    study = nct(records[0])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        monkeypatch.setattr(flows.sync, "datetime", _clock(timedelta(days=60)))
        fast_sync(registry, root, full=True)
        monkeypatch.undo()
        registry.put(_status(registry.record(study), "SUSPENDED", "2026-11-20"))
        fast_sync(registry, root, full=True)
    query = "SELECT nct_id, event FROM changes ORDER BY ALL"
    before = rows(root, query)
    rederive_changes(warehouse=str(root))
    assert [event for _, event in before] == ["field_changed", "status_changed"]  # the date, the status
    assert rows(root, query) == before


@pytest.mark.usefixtures("prefect_api")
def test_a_scopes_first_run_after_a_run_whose_clock_was_ahead_still_reports_studies_posted_since(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A study the registry first posted today is news in a new scope's first run when the warehouse had
    runs before; a run made while the clock was 60 days ahead said the warehouse's newest run began in
    February, and the study (posted 'before' it) was no news, in the sync and after rederive."""
    from flows.derive import rederive_changes

    records = [copy.deepcopy(r) for r in real_records()[:5]]
    fresh = copy.deepcopy(records.pop())
    today = datetime.now(UTC).date().isoformat()
    fresh["protocolSection"]["statusModule"]["studyFirstPostDateStruct"] = {"date": today, "type": "ACTUAL"}
    fresh["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"] = {"date": today, "type": "ACTUAL"}
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        monkeypatch.setattr(flows.sync, "datetime", _clock(timedelta(days=60)))
        fast_sync(registry, root, ids=[nct(r) for r in records])
        monkeypatch.undo()
        registry.put(fresh)
        fast_sync(registry, root, ids=[nct(fresh)])
    query = "SELECT nct_id, event FROM changes ORDER BY ALL"
    assert rows(root, query) == [(nct(fresh), "study_added")]
    rederive_changes(warehouse=str(root))
    assert rows(root, query) == [(nct(fresh), "study_added")]


@pytest.mark.usefixtures("prefect_api")
def test_a_study_back_in_its_scope_after_an_exit_recorded_with_the_clock_ahead_is_retired_when_it_goes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --status RECRUITING scope: the study completes (a full run with the clock 60 days ahead records
    its exit), recruits again (the next run, clock right, lists it), then the registry removes it. By
    started_at its exit was newer than its return, so it was no member: the full run never looked it up,
    and it stayed current, with no study_removed."""
    records = [copy.deepcopy(r) for r in real_records()[:6]]
    for record in records:
        record["protocolSection"]["statusModule"]["overallStatus"] = "RECRUITING"
    study = nct(records[0])
    root = tmp_path / "wh"
    scope: dict[str, Any] = {"full": True, "status": ["RECRUITING"]}
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, **scope)
        registry.put(_status(registry.record(study), "COMPLETED", "2026-11-20"))
        monkeypatch.setattr(flows.sync, "datetime", _clock(timedelta(days=60)))
        fast_sync(registry, root, **scope)
        monkeypatch.undo()
        registry.put(_status(registry.record(study), "RECRUITING", "2026-11-21"))
        fast_sync(registry, root, **scope)
        registry.remove(study)
        last = fast_sync(registry, root, **scope)
    assert last["retired"] == 1
    assert rows(root, f"SELECT event FROM changes WHERE nct_id = '{study}' AND event = 'study_removed'") == [
        ("study_removed",)]
    assert rows(root, f"SELECT is_removed FROM study_versions WHERE nct_id = '{study}' AND is_current") == [(True,)]


@pytest.mark.usefixtures("prefect_api")
def test_a_sync_committed_while_a_watchs_first_alerts_run_delivers_is_alerted_whatever_its_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch's first alerts run plans, then a sync (its clock 30 days behind) commits a status change
    before the alerts run records its outcome. The change was in neither that run's plan nor, by its
    detected_at, the watch's window, and the runs after the alerts run's first commit did not include it:
    it was never alerted. The runs after the generation the plan read do."""
    records = [copy.deepcopy(r) for r in real_records()[:6]]
    study = nct(records[0])
    feed = tmp_path / "feed.json"
    config = watchlist(tmp_path / "w.yaml", {"feed": {"type": "feed", "path": str(feed), "format": "json"}},
                       [{"name": "one", "channels": ["feed"], "studies": {"ids": [study]}}])
    root = tmp_path / "wh"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, root, full=True)
        record = flows.alerts.record_outcomes

        def sync_meanwhile(*args: Any, **kwargs: Any) -> None:
            registry.put(_status(registry.record(study), "SUSPENDED", "2026-11-20"))
            with monkeypatch.context() as behind:
                behind.setattr(flows.sync, "datetime", _clock(timedelta(days=-30)))
                fast_sync(registry, root, full=True)
            record(*args, **kwargs)

        monkeypatch.setattr(flows.alerts, "record_outcomes", sync_meanwhile)
        first = send_alerts(config=str(config), warehouse=str(root))
        monkeypatch.undo()
        second = send_alerts(config=str(config), warehouse=str(root))
        again = send_alerts(config=str(config), warehouse=str(root))

    assert rows(root, f"SELECT new_value FROM changes WHERE nct_id = '{study}' AND event = 'status_changed'") == [
        ("SUSPENDED",)]
    assert (first["messages_sent"], second["messages_sent"], again["messages_sent"]) == (0, 1, 0)
    assert ["SUSPENDED" in item["title"] for item in json.loads(feed.read_text())["items"]] == [True]
