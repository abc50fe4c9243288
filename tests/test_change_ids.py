"""Issue 19 item 3: a change's id names what the change is, so it survives backfill renumbering,
compaction and rederive (real Prefect runs, real warehouse), and an alert sent is not sent again."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flows.alerts import send_alerts
from flows.compact import compact_warehouse
from flows.derive import rederive_changes
from pipeline import mutate
from pipeline.changes import Rules, VersionPair, derive_changes, version_identity
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from tests.test_alerts import watchlist
from tests.test_backfill import HISTORY, NCT, backfill
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")
MEANING = """SELECT change_id, nct_id, event, path, old_value, new_value, from_version, to_version
             FROM changes ORDER BY change_id"""


def rows(warehouse_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql).fetchall()


def meanings(warehouse_dir: Path) -> dict[str, tuple[Any, ...]]:
    """change_id -> what it says (event, path, old, new); the version numbers are left out."""
    out: dict[str, tuple[Any, ...]] = {}
    for change_id, nct_id, event, path, old, new, _, _ in rows(warehouse_dir, MEANING):
        assert change_id not in out, f"two changes share the id {change_id}"
        out[change_id] = (nct_id, event, path, old, new)
    return out


@pytest.fixture
def terminated_then_backfilled(tmp_path: Path) -> dict[str, Any]:
    """Two syncs see the study's last registry version, then its termination, and alert it; then a
    backfill puts nine older versions before them (the two become versions 10 and 11)."""
    warehouse_dir = tmp_path / "warehouse"
    config = watchlist(tmp_path / "watch.yaml", {"feed": {"type": "feed", "path": str(tmp_path / "feed.json")}},
                       [{"name": "study", "studies": {"ids": [NCT]}, "since": "2000-01-01", "channels": ["feed"]}])
    out: dict[str, Any] = {"dir": warehouse_dir, "config": config, "feed": tmp_path / "feed.json"}
    with FakeRegistry().start() as registry:
        registry.put(HISTORY.records[9])
        fast_sync(registry, warehouse_dir)
        registry.put(mutate.posted_on(mutate.set_status(HISTORY.records[9], "TERMINATED", "Sponsor decision"),
                                      date(2020, 6, 1)))
        fast_sync(registry, warehouse_dir)
        out["sent"] = send_alerts(config=str(config), warehouse=str(warehouse_dir))
        out["before"] = meanings(warehouse_dir)
        registry.put_history(HISTORY)
        out["backfill"] = backfill(registry, warehouse_dir, NCT)
    return out


def test_a_backfill_renumbers_versions_but_keeps_every_change_id_and_its_meaning(
        terminated_then_backfilled: dict[str, Any]) -> None:
    run = terminated_then_backfilled
    before, after = run["before"], meanings(run["dir"])
    terminated = [i for i, m in before.items() if m[1] == "status_changed"]
    assert [before[i][3:] for i in terminated] == [("COMPLETED", "TERMINATED")]
    assert {i: after.get(i) for i in before} == before  # every id still there, saying the same
    [(from_version, to_version)] = rows(
        run["dir"], f"SELECT from_version, to_version FROM changes WHERE change_id = '{terminated[0]}'")
    latest = rows(run["dir"], f"SELECT max(version) FROM study_versions WHERE nct_id = '{NCT}'")[0][0]
    assert (from_version, to_version) == (latest - 1, latest) and latest > 2  # renumbered from (1, 2)
    assert len(after) > len(before)  # the history's own changes, under ids of their own


def test_an_alert_sent_before_a_backfill_is_not_sent_again_after_it(
        terminated_then_backfilled: dict[str, Any]) -> None:
    run = terminated_then_backfilled
    assert run["sent"]["messages"] == 1
    sent_before = {r[0] for r in rows(run["dir"], "SELECT change_id FROM alert_deliveries WHERE status = 'sent'")}
    assert len(sent_before) == 2  # the termination and its why_stopped
    send_alerts(config=str(run["config"]), warehouse=str(run["dir"]))
    feed = json.loads(run["feed"].read_text())
    sent = [c["change_id"] for item in feed["items"] for s in item["_trialsync"]["studies"] for c in s["changes"]]
    assert sorted(sent_before) == sorted(c for c in sent if c in sent_before)  # each once, under the same id
    assert rows(run["dir"], "SELECT change_id, count(*) FROM alert_deliveries GROUP BY ALL HAVING count(*) > 1") == []


def test_compaction_and_rederive_keep_every_change_id_and_its_meaning(
        terminated_then_backfilled: dict[str, Any]) -> None:
    warehouse_dir = terminated_then_backfilled["dir"]
    after_backfill = rows(warehouse_dir, "SELECT * FROM changes ORDER BY change_id")
    compact_warehouse(warehouse=str(warehouse_dir))
    assert rows(warehouse_dir, "SELECT * FROM changes ORDER BY change_id") == after_backfill
    rederive_changes(warehouse=str(warehouse_dir))
    assert rows(warehouse_dir, "SELECT * FROM changes ORDER BY change_id") == after_backfill


def test_two_removals_of_the_same_content_are_two_changes(tmp_path: Path) -> None:
    records = real_records()[:3]
    warehouse_dir = tmp_path / "warehouse"
    with FakeRegistry(records).start() as registry:
        fast_sync(registry, warehouse_dir, full=True)
        for _ in range(2):
            registry.remove(nct(records[0]))
            fast_sync(registry, warehouse_dir, full=True)
            registry.put(records[0])
            fast_sync(registry, warehouse_dir, full=True)
    events = rows(warehouse_dir, "SELECT event, count(DISTINCT change_id), count(*) FROM changes GROUP BY ALL "
                                 "ORDER BY ALL")
    assert events == [("study_reappeared", 2, 2), ("study_removed", 2, 2)]


def test_the_id_depends_on_the_versions_contents_not_their_numbers() -> None:
    older = next(r for r in real_records() if r["protocolSection"]["statusModule"]["overallStatus"] == "RECRUITING")
    newer = mutate.set_status(older, "TERMINATED")
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def ids(from_version: int, old_hash: str, new_hash: str) -> list[str]:
        pair = VersionPair(nct(older), from_version, from_version + 1, older, newer, "run", now, None,
                           old_identity=version_identity(old_hash, False, None),
                           new_identity=version_identity(new_hash, False, None))
        return [c.change_id for c in derive_changes(pair, Rules())]

    assert ids(1, "a", "b") == ids(7, "a", "b") != []
    assert ids(1, "a", "b") != ids(1, "a", "c")
    assert version_identity("a", True, now) != version_identity("a", True, now.replace(day=2))
    elsewhere = now.astimezone(timezone(timedelta(hours=-5)))  # a session in another time zone
    assert version_identity("a", True, elsewhere) == version_identity("a", True, now)
