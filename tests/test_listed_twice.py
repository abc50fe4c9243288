"""A study listed twice in one listing (one page, or two), its newer record first and then an older one
with the same lastUpdatePostDate (a replica behind the same front end still serving the record as it
was): the newer wins; the run must not store the older one as a further version that undoes the edit
(two false changes, and a third when the next run sees the newer record again). Real Prefect runs
against the fake registry over loopback; records from the real pair NCT01967030 (two downloads with one
lastUpdatePostDate, versionHolder 2025-12-23 and 2026-01-02) and a real submissionTracking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import mutate
from pipeline.hashing import content_hash
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import STUDIES_DIR, fast_sync, load, nct, real_records, snapshot_pairs
from warehouse import Warehouse

pytestmark = pytest.mark.usefixtures("prefect_api")
STUDY = "NCT01967030"
SIZE = 20


def rows(warehouse_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with Warehouse(warehouse_dir).connect() as con:
        return con.execute(sql, params or []).fetchall()


def edited_pair() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(older, newer, edited): the real downloads (the same material content, newer's snapshot later),
    and newer edited without a new date (a QC submission: the registry's only sign of results under review)."""
    older, newer = snapshot_pairs()[STUDY]
    tracking = load(STUDIES_DIR / "NCT05973799.json")["derivedSection"]["miscInfoModule"]["submissionTracking"]
    edited = mutate.set_path(newer, ("derivedSection", "miscInfoModule", "submissionTracking"), tracking)
    assert content_hash(older) == content_hash(newer) != content_hash(edited)
    return older, newer, edited


# The older copy: the record as stored (older snapshot), or the same content from the edit's own snapshot
# day (versionHolder no help: the run tells it by the content it already replaced); on the study's own
# page or on the next one.
CASES = {
    "same page, older snapshot": ("older", 1),
    "same page, same snapshot day": ("newer", 1),
    "next page, older snapshot": ("older", 2),
    "next page, same snapshot day": ("newer", 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_study_listed_twice_newer_first_keeps_the_newer_record(case: str, warehouse_dir: Path) -> None:
    older, newer, edited = edited_pair()
    copy_of, page = CASES[case]
    others = [r for r in real_records() if nct(r) > STUDY][:30]  # the study is first on page 1
    with FakeRegistry([older, *others]).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=SIZE)
        registry.put(edited)
        extra = registry.faults.add("extra", page=page, records=(orjson.dumps(older if copy_of == "older" else newer),))
        run = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
        assert extra.hits == 1
        assert (run["versions_written"], run["studies_seen"]) == (1, 31)
        assert rows(warehouse_dir, "SELECT version, content_hash, is_current FROM study_versions WHERE nct_id = ? "
                                   "ORDER BY version", [STUDY]) == [
            (1, content_hash(older), False), (2, content_hash(edited), True)]
        assert rows(warehouse_dir, "SELECT DISTINCT to_version, category FROM changes WHERE nct_id = ? "
                                   "AND event <> 'study_added'", [STUDY]) == [(2, "results")]
        # The next run sees the newer record alone: nothing to redo.
        again = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
        assert (again["versions_written"], again["changes_written"]) == (0, 0)


def test_a_reversal_from_a_later_snapshot_in_the_same_listing_is_news(warehouse_dir: Path) -> None:
    """The same listing holds the edit, then the record as before from a later snapshot day than the edit's:
    the registry reverted the edit itself, and the run stores it (a replica does not serve the future)."""
    older, newer, edited = edited_pair()
    reverted = mutate.set_path(newer, ("derivedSection", "miscInfoModule", "versionHolder"), "2026-01-03")
    others = [r for r in real_records() if nct(r) > STUDY][:30]
    with FakeRegistry([older, *others]).start() as registry:
        fast_sync(registry, warehouse_dir, page_size=SIZE)
        registry.put(edited)
        registry.faults.add("extra", page=2, records=(orjson.dumps(reverted),))
        run = fast_sync(registry, warehouse_dir, page_size=SIZE, full=True)
    assert run["versions_written"] == 2
    assert rows(warehouse_dir, "SELECT version, content_hash FROM study_versions WHERE nct_id = ? ORDER BY version",
                [STUDY]) == [(1, content_hash(older)), (2, content_hash(edited)), (3, content_hash(older))]
