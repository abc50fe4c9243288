"""An older bulk file loaded after a newer one: nothing it says is news (issue: stale records).

Records dated before their stored versions were always stale. These are the two it still got wrong:
a record dated the same day as the stored version but different (the registry edited it since without
moving the date), and a study removed since (404). From an archive as new as the warehouse, both stay
news: a same-day edit is a version and a study served again after a 404 comes back.
"""

from __future__ import annotations

import logging
import re
import shutil
import zipfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import corpus
from pipeline import mutate
from pipeline.versioning import RunContext
from tests.conftest import STUDIES_DIR, load
from tests.test_bulk_reload import load_bulk, query, rewrite
from warehouse import Warehouse
from warehouse.rows import tombstones_table

SIZE = 120


def _members(zip_path: Path) -> dict[str, dict[str, Any]]:
    with zipfile.ZipFile(zip_path) as zf:
        return {info.filename: orjson.loads(zf.read(info)) for info in zf.infolist()}


def _nct(record: dict[str, Any]) -> str:
    return str(record["protocolSection"]["identificationModule"]["nctId"])


def _posted(record: dict[str, Any]) -> date:
    return date.fromisoformat(record["protocolSection"]["statusModule"]["lastUpdatePostDateStruct"]["date"])


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``old.zip`` and ``new.zip``: in the new one, study ``edited`` gained submissionTracking without a
    new post date, and study ``updated`` was posted today (the new file is current, as the registry's
    nightly file is; the old one's newest date is months back)."""
    out = tmp_path_factory.mktemp("older")
    corpus.generate(STUDIES_DIR, SIZE, out)
    old = out / "base.zip"
    members = _members(old)
    today = datetime.now(UTC).date()
    assert max(map(_posted, members.values())) < today - timedelta(days=30)
    names = [n for n, r in members.items()
             if "submissionTracking" not in r.get("derivedSection", {}).get("miscInfoModule", {})]
    edited_name, updated_name, removed_name = names[:3]
    edited = members[edited_name]
    tracking = load(STUDIES_DIR / "NCT05973799.json")["derivedSection"]["miscInfoModule"]["submissionTracking"]
    edited.setdefault("derivedSection", {}).setdefault("miscInfoModule", {})["submissionTracking"] = tracking
    updated = mutate.posted_on(mutate.set_status(members[updated_name], "WITHDRAWN"), today)
    new_members = {edited_name: edited, updated_name: updated}
    new = rewrite(old, out / "new.zip", lambda n, data: orjson.dumps(new_members[n]) if n in new_members else data)
    return {"old": old, "new": new, "edited": _nct(edited), "updated": _nct(updated),
            "removed": _nct(members[removed_name])}


@pytest.fixture
def synced_past_the_old_archive(archives: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Old archive, then the new one, then the registry removes study ``removed`` (a 404 in a full run)."""
    warehouse_dir = tmp_path_factory.mktemp("wh") / "wh"
    load_bulk(archives["old"], warehouse_dir)
    assert load_bulk(archives["new"], warehouse_dir)["versions_written"] == 2
    ctx = RunContext("run-removal", datetime.now(UTC), "api")
    with Warehouse(warehouse_dir).writer(ctx.run_id) as run:
        run.append("study_versions", tombstones_table([(archives["removed"], 2, "removed")], ctx))
        run.commit()
    return warehouse_dir


def _state(warehouse_dir: Path, ids: list[str]) -> list[tuple[Any, ...]]:
    return query(warehouse_dir, "SELECT nct_id, version, is_removed, content_hash FROM study_versions "
                                "WHERE is_current AND nct_id IN (SELECT unnest(?)) ORDER BY nct_id", [ids])


@pytest.mark.parametrize("workers", [1, 2])
def test_an_older_archive_after_a_newer_one_writes_no_version_and_brings_no_removed_study_back(
        archives: dict[str, Any], synced_past_the_old_archive: Path, workers: int) -> None:
    warehouse_dir = synced_past_the_old_archive
    ids = sorted([archives["edited"], archives["updated"], archives["removed"]])
    before = _state(warehouse_dir, ids)
    summary = load_bulk(archives["old"], warehouse_dir, workers=workers)
    assert (summary["versions_written"], summary["changes_written"], summary["stale"]) == (0, 0, 3)
    assert summary["studies_seen"] == SIZE
    assert _state(warehouse_dir, ids) == before
    assert query(warehouse_dir, "SELECT count(*) FROM changes WHERE run_id = ?", [summary["run_id"]]) == [(0,)]
    # Each study of the archive is seen once by the run, the stale ones at the version the warehouse holds.
    seen = query(warehouse_dir, "SELECT nct_id, version FROM run_studies WHERE run_id = ? AND nct_id IN "
                                "(SELECT unnest(?)) ORDER BY nct_id", [summary["run_id"], ids])
    assert seen == [(nct, version) for nct, version, _, _ in before]
    assert query(warehouse_dir, "SELECT count(*), count(DISTINCT nct_id) FROM run_studies WHERE run_id = ?",
                 [summary["run_id"]]) == [(SIZE, SIZE)]


def test_an_archive_as_new_as_the_warehouse_still_brings_a_404d_study_back_and_keeps_same_day_edits(
        archives: dict[str, Any], synced_past_the_old_archive: Path, tmp_path: Path) -> None:
    warehouse_dir = synced_past_the_old_archive
    summary = load_bulk(archives["new"], warehouse_dir)
    assert (summary["versions_written"], summary["stale"]) == (1, 0)
    assert query(warehouse_dir, "SELECT nct_id, event FROM changes WHERE run_id = ?",
                 [summary["run_id"]]) == [(archives["removed"], "study_reappeared")]
    # And a same-day edit in a current archive is a version (as in the first reload above).
    fresh = Path(shutil.copytree(warehouse_dir, tmp_path / "again"))
    edited = {n: r for n, r in _members(archives["new"]).items() if _nct(r) == archives["edited"]}
    [(name, record)] = edited.items()
    record["protocolSection"]["statusModule"]["overallStatus"] = "SUSPENDED"
    again = rewrite(archives["new"], tmp_path / "again.zip",
                    lambda n, data: orjson.dumps(record) if n == name else data)
    summary = load_bulk(again, fresh)
    assert (summary["versions_written"], summary["stale"]) == (1, 0)
    assert query(fresh, "SELECT version, overall_status FROM studies WHERE nct_id = ?",
                 [archives["edited"]]) == [(3, "SUSPENDED")]


def test_monthly_snapshots_loaded_in_order_keep_same_day_edits_as_news_and_an_older_one_stale(
        archives: dict[str, Any], tmp_path: Path) -> None:
    """Old registry files loaded today, in order (a history built from archived snapshots): each file
    is judged by the files its versions came from, not by today's date."""
    members = _members(archives["old"])
    newest = max(map(_posted, members.values()))
    edited_name = next(n for n, r in members.items() if _nct(r) == archives["edited"])
    later_name = next(n for n, r in members.items() if _nct(r) == archives["updated"])
    edited = dict(members[edited_name], derivedSection=_members(archives["new"])[edited_name]["derivedSection"])
    later = mutate.posted_on(mutate.set_status(members[later_name], "SUSPENDED"), newest + timedelta(days=20))
    edits = {edited_name: orjson.dumps(edited), later_name: orjson.dumps(later)}
    month_later = rewrite(archives["old"], tmp_path / "month.zip", lambda n, data: edits.get(n, data))
    warehouse_dir = tmp_path / "wh"
    load_bulk(archives["old"], warehouse_dir)
    summary = load_bulk(month_later, warehouse_dir)
    assert (summary["versions_written"], summary["stale"]) == (2, 0)  # the same-day edit is news
    assert query(warehouse_dir, "SELECT count(*) FROM changes WHERE run_id = ? AND nct_id = ?",
                 [summary["run_id"], archives["edited"]]) != [(0,)]
    again = load_bulk(archives["old"], warehouse_dir)  # the older file once more: stale, both
    assert (again["versions_written"], again["stale"]) == (0, 2)


def test_a_same_day_edit_of_the_archives_newest_record_is_news(
        archives: dict[str, Any], synced_past_the_old_archive: Path, tmp_path: Path) -> None:
    """The held members' own dates are the archive's too: when the edited record is the only one with
    the archive's newest date, the archive is not taken for an older one."""
    warehouse_dir = synced_past_the_old_archive
    [(name, record)] = [(n, r) for n, r in _members(archives["new"]).items() if _nct(r) == archives["updated"]]
    record["protocolSection"]["statusModule"]["overallStatus"] = "COMPLETED"  # same date: today's, the newest
    edited = rewrite(archives["new"], tmp_path / "edited.zip",
                     lambda n, data: orjson.dumps(record) if n == name else data)
    summary = load_bulk(edited, warehouse_dir)
    assert (summary["stale"], summary["pages"]) == (0, 2)  # its 2 shard tasks: the held pass is none
    assert query(warehouse_dir, "SELECT version, overall_status FROM studies WHERE nct_id = ?",
                 [archives["updated"]]) == [(3, "COMPLETED")]


def test_a_reload_of_an_older_archive_warns_once_for_the_whole_run(
        archives: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every study updated after the old archive: reloading it makes all of them stale, in every shard
    task. One warning for the run (it was one per shard: ~100 lines for the registry's file)."""
    today = datetime.now(UTC).date()
    newer = rewrite(archives["old"], tmp_path / "newer.zip",
                    lambda _, data: orjson.dumps(mutate.posted_on(orjson.loads(data), today)))
    warehouse_dir = tmp_path / "wh"
    load_bulk(archives["old"], warehouse_dir)
    load_bulk(newer, warehouse_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trialsync"):
        summary = load_bulk(archives["old"], warehouse_dir, workers=2)
    assert (summary["stale"], summary["versions_written"]) == (SIZE, 0)
    assert summary["pages"] > 1  # the stale studies were in more than one shard task
    [warning] = [r.getMessage() for r in caplog.records if "stale record(s)" in r.getMessage()]
    assert warning.startswith(f"{SIZE} stale record(s)") and warning.endswith(f"and {SIZE - 20} more")
    named = re.findall(r"NCT\d{8}", warning)
    assert len(set(named)) == 20 and set(named) <= {_nct(r) for r in _members(archives["old"]).values()}
