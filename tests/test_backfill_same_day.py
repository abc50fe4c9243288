"""A backfill dates every version the registry's history shows by the history, also those a sync stored
first: the history answer does not depend on when (or whether) a sync saw a version.

The registry's history can show two or more versions on one day (an edit and its correction). A sync
or a bulk load that stored the last of them, maybe years later, must not keep its observation day as
the day it became valid once the backfill has placed the history's earlier same-day versions before it:
``studies_as_of`` would answer with the earlier version for every day in between.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from flows.backfill import backfill_history
from pipeline import mutate
from pipeline.registry.fake_history import history_from_records
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync, nct, real_records
from warehouse import Warehouse

START = date(2024, 3, 1)
# Each case: the day offsets of the history's versions (oldest first), and the versions syncs saw
# before the backfill (indexes into them, in the order the syncs ran).
CASES = {
    "a same-day pair ending the history, the last synced": ([0, 10, 10], [2]),
    "a same-day pair in the middle, both synced ones in the pair": ([0, 10, 10, 20], [1, 3]),
    "three on the first day, the third and the last synced": ([0, 0, 0, 7], [2, 3]),
    "a same-day pair, the last synced, then a later version": ([0, 5, 5, 9], [2]),
}


def _base() -> dict[str, Any]:
    return next(r for r in real_records()
                if r["protocolSection"].get("designModule", {}).get("enrollmentInfo", {}).get("count"))


def _versions(offsets: list[int]) -> list[tuple[date, dict[str, Any]]]:
    base = _base()
    dated = []
    for i, offset in enumerate(offsets):
        day = START + timedelta(days=offset)
        dated.append((day, mutate.posted_on(mutate.set_enrollment(base, 100 + i), day)))
    return dated


def _backfill(registry: FakeRegistry, warehouse_dir: Path, nct_id: str) -> None:
    backfill_history(ids=[nct_id], api_url=registry.url, warehouse=str(warehouse_dir), request_interval=0.0,
                     backoff_seconds=0.01, timeout_seconds=5.0, lock_timeout=5.0)


def _timeline(warehouse_dir: Path, nct_id: str, first: date, last: date) -> dict[str, Any]:
    with Warehouse(warehouse_dir).connect() as con:
        versions = con.execute("SELECT content_hash, valid_from, valid_to, is_current FROM study_versions "
                               "WHERE nct_id = ? ORDER BY version", [nct_id]).fetchall()
        days = [first + timedelta(days=n) for n in range(-1, (last - first).days + 3)]
        as_of = {str(d): con.execute("SELECT enrollment_count FROM studies_as_of(?) WHERE nct_id = ?",
                                     [d, nct_id]).fetchall() for d in days}
        changed_on = con.execute("SELECT DISTINCT CAST(registry_updated AS VARCHAR), to_version FROM changes "
                                 "WHERE nct_id = ? ORDER BY 2", [nct_id]).fetchall()
    return {"versions": versions, "as_of": as_of, "changes": changed_on}


@pytest.mark.parametrize("case", list(CASES))
def test_versions_a_sync_stored_first_are_dated_by_the_history_like_the_ones_it_backfills(
        case: str, tmp_path: Path) -> None:
    offsets, synced = CASES[case]
    dated = _versions(offsets)
    nct_id = nct(dated[0][1])
    history = history_from_records(dated)
    first, last = dated[0][0], dated[-1][0]

    synced_first = tmp_path / "synced-first"
    with FakeRegistry().start() as registry:
        for index in synced:
            registry.put(dated[index][1])
            fast_sync(registry, synced_first, ids=[nct_id])
        registry.put_history(history)
        _backfill(registry, synced_first, nct_id)
    history_only = tmp_path / "history-only"
    with FakeRegistry().start() as registry:
        registry.put_history(history)
        _backfill(registry, history_only, nct_id)

    expected = _timeline(history_only, nct_id, first, last)
    # what the history says: the last version of a day is valid from the next day on
    assert expected["as_of"][str(last + timedelta(days=1))] == [(100 + len(offsets) - 1,)]
    assert len(expected["versions"]) == len(offsets)
    assert _timeline(synced_first, nct_id, first, last) == expected
