"""Concurrency: syncs started together take turns (never interleave); a sync that cannot get the lock
in time fails clearly; readers during a sync see the old run or the new one, never a mix."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline import mutate
from pipeline.registry.fake_server import FakeRegistry
from tests.conftest import fast_sync
from tests.reliability.support import DUCKDB_CLI, FULL, TRIALSYNC, cli, popen_sync, query, state
from warehouse import Warehouse

pytestmark = [pytest.mark.reliability, pytest.mark.usefixtures("prefect_api")]
CONCURRENT_SYNCS = 3 if FULL else 2
SIGNATURE = ("SELECT (SELECT count(*) FROM sync_runs), (SELECT count(*) FROM study_versions), "
             "(SELECT count(*) FROM studies WHERE overall_status = 'SUSPENDED'), (SELECT count(*) FROM run_studies)")


def test_syncs_started_together_take_turns_and_each_builds_on_the_last(
        prefect_api: str, registry: FakeRegistry, warehouse_dir: Path) -> None:
    for page in range(1, 8):  # slow pages, so the runs overlap in time if the lock let them
        registry.faults.add("delay", delay=0.2, times=CONCURRENT_SYNCS, page=page)
    procs = [popen_sync(registry.url, warehouse_dir, "--full", "--page-size", "50", "--lock-timeout", "120",
                        env={"PREFECT_API_URL": prefect_api}) for _ in range(CONCURRENT_SYNCS)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * CONCURRENT_SYNCS, [err[-500:] for _, err in outputs]
    # Each run walked its 7 pages without another run's requests in between.
    assert [registry.page_of(p) for p in registry.study_requests()] == list(range(1, 8)) * CONCURRENT_SYNCS
    written = sorted(int(re.search(r"(\d+) new versions", out).group(1)) for out, _ in outputs)  # type: ignore[union-attr]
    assert written == [0] * (CONCURRENT_SYNCS - 1) + [326]  # later runs saw the first one's commit
    assert query(warehouse_dir, "SELECT count(*), sum(versions_written) FROM sync_runs") == [(CONCURRENT_SYNCS, 326)]
    assert query(warehouse_dir, "SELECT count(*), count(DISTINCT nct_id) FROM study_versions") == [(326, 326)]


def test_a_sync_that_cannot_get_the_lock_in_time_fails_with_a_clear_message_and_changes_nothing(
        prefect_api: str, registry: FakeRegistry, warehouse_dir: Path) -> None:
    fast_sync(registry, warehouse_dir, page_size=1000)
    before = state(warehouse_dir)
    with Warehouse(warehouse_dir).writer("20260101T000000Z-holder", lock_timeout=5):
        result = cli("sync", "--api-url", registry.url, "--warehouse", str(warehouse_dir), "--full",
                     "--lock-timeout", "1", "--request-interval", "0", env={"PREFECT_API_URL": prefect_api})
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert errors[-1] == (f"trialsync: error: the warehouse {warehouse_dir} is busy: a sync is running "
                          f"(run 20260101T000000Z-holder, pid {_pid()}); waited 1s")
    assert state(warehouse_dir) == before


def _pid() -> int:
    import os

    return os.getpid()


def _shell(warehouse: Path) -> tuple[int, ...]:
    out = subprocess.run([str(DUCKDB_CLI), "-readonly", "-csv", "-noheader", str(warehouse / "warehouse.duckdb"),
                          "-c", SIGNATURE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(int(v) for v in out.stdout.strip().split(","))


def _trialsync_sql(warehouse: Path) -> tuple[int, ...]:
    out = subprocess.run([str(TRIALSYNC), "sql", SIGNATURE, "--format", "csv", "--warehouse", str(warehouse)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return tuple(int(v) for v in out.stdout.strip().splitlines()[1].split(","))


def test_readers_during_a_sync_see_the_old_run_or_the_new_one_never_a_mix(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    fast_sync(registry, warehouse_dir, page_size=50)
    old = _shell(warehouse_dir)
    registry.put(*(mutate.set_status(r, "SUSPENDED") for r in records[:300]))
    for page in range(2, 8):
        registry.faults.add("delay", delay=0.5, times=1, page=page)
    pinned = Warehouse(warehouse_dir).connect()  # opened before the commit, queried after it

    result: dict[str, Any] = {}
    sync = threading.Thread(target=lambda: result.update(fast_sync(registry, warehouse_dir, page_size=50,
                                                                   full=True)))
    seen: dict[str, list[tuple[int, ...]]] = {"duckdb -readonly": [], "trialsync sql": [], "in-process": []}
    stop = threading.Event()

    def hammer() -> None:  # many short-lived readers, to meet the catalog swap itself
        while not stop.is_set():
            with Warehouse(warehouse_dir).connect() as con:
                seen["in-process"].append(tuple(con.execute(SIGNATURE).fetchall()[0]))

    reader = threading.Thread(target=hammer)
    sync.start()
    reader.start()
    while sync.is_alive():
        seen["duckdb -readonly"].append(_shell(warehouse_dir))
        seen["trialsync sql"].append(_trialsync_sql(warehouse_dir))
    sync.join()
    time.sleep(0.2)
    stop.set()
    reader.join()
    new = _shell(warehouse_dir)
    assert result["versions_written"] == 300
    assert new == (2, 626, 300, 652) and old == (1, 326, 0, 326)
    for name, observed in seen.items():
        assert set(observed) <= {old, new}, f"{name} saw a mix: {set(observed) - {old, new}}"
    assert old in seen["duckdb -readonly"] and old in seen["trialsync sql"], "no reader ran during the sync"
    assert {old, new} <= set(seen["in-process"])
    assert tuple(pinned.execute(SIGNATURE).fetchall()[0]) == old  # a snapshot: the old catalog, old files
    pinned.close()
    readers = sum(len(v) for v in seen.values())
    print(f"{readers} reader queries during one sync: {', '.join(f'{k} {len(v)}' for k, v in seen.items())}")


def test_a_reader_held_open_in_the_same_process_neither_goes_stale_nor_makes_a_commit_lose_runs(
        registry: FakeRegistry, warehouse_dir: Path, records: list[dict[str, Any]]) -> None:
    """DuckDB hands a process its cached instance of a database file while a connection to it is
    open: a writer reading the manifest that way would see the catalog of that reader's time and
    commit a catalog without the runs since (whose files the next run would then delete)."""
    fast_sync(registry, warehouse_dir, page_size=1000)
    pinned = Warehouse(warehouse_dir).connect()
    for status in ("SUSPENDED", "COMPLETED"):
        registry.put(*(mutate.set_status(r, status) for r in records[:10]))
        fast_sync(registry, warehouse_dir, page_size=1000, full=True)
        with Warehouse(warehouse_dir).connect() as fresh:  # sees every commit, while pinned is open
            assert fresh.execute("SELECT count(*) FROM sync_runs").fetchall() == [(3 if status == "COMPLETED" else 2,)]
    assert pinned.execute("SELECT count(*), sum(versions_written) FROM sync_runs").fetchall() == [(1, 326)]
    pinned.close()
    assert query(warehouse_dir, "SELECT count(*), sum(versions_written) FROM sync_runs") == [(3, 346)]
    assert len(list((warehouse_dir / "runs").iterdir())) == 3
